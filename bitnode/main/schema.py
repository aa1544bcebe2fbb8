"""The settings schema: every option a node knows, with kind, default and meaning.

Service ``enabled`` options are added by the service driver from the service
classes themselves, so a service and its switch cannot drift apart.
"""

from __future__ import annotations

from bitnode.main.options import BOOLEAN, DISK_SPACE, FLOAT, INTEGER, STRING, STRING_LIST, Option

_PORT = {"minimum": 0, "maximum": 65535}
#: The packet transport's address and port: the gateway listens there, identity and STUN answer for it.
TCP_PORT_KEY = "services/tcp-connections/tcp-port"
TCP_INTERFACE_KEY = "services/tcp-connections/interface"
_HOST = r"[A-Za-z0-9.:\-\[\]]+"

SCHEMA: tuple[Option, ...] = (
    # --- the local API -----------------------------------------------------
    Option("interface/api/interface", STRING, "127.0.0.1",
           "Address the HTTP and WebSocket API listen on. Keep it local unless you know why.",
           pattern=_HOST, restart_needed=True),
    Option("interface/api/http-port", INTEGER, 8180, "TCP port of the HTTP REST API (0 picks a free port).",
           restart_needed=True, **_PORT),
    Option("interface/api/ws-port", INTEGER, 8280, "TCP port of the WebSocket API (0 picks a free port).",
           restart_needed=True, **_PORT),
    Option("interface/api/rate-limit", FLOAT, 2000.0,
           "Requests per second allowed per API client before 429 answers (0 turns the limit off).",
           minimum=0),
    Option("interface/api/rate-burst", INTEGER, 4000, "How many requests a client may send at once above the rate.",
           minimum=1),
    Option("interface/api/max-body-bytes", INTEGER, 1024 * 1024,
           "Largest HTTP request body or WebSocket message (bytes) the API accepts (413 above; counted in "
           "process_info api_limits).", minimum=1024, maximum=64 * 1024 * 1024),
    Option("interface/api/max-json-depth", INTEGER, 32,
           "Deepest nesting of lists and objects in JSON sent to the API (400 above).", minimum=2, maximum=200),
    Option("interface/api/ws-auth-timeout", FLOAT, 10.0,
           "Seconds a WebSocket client that connected without the secret has to send its auth message.",
           minimum=1.0, maximum=300.0),
    Option("interface/api/event-buffer", INTEGER, 1000,
           "How many recent events are kept so listeners can resume from a sequence id.", minimum=10,
           restart_needed=True),
    Option("interface/api/allow-debugger", BOOLEAN, False,
           "Let process_debug open pdb when the node runs in the foreground on a terminal."),
    Option("interface/webhooks/url", STRING, "",
           "If set, every event is POSTed as JSON to this URL (see service_webhooks).", pattern=r"(|https?://\S+)"),
    Option("interface/webhooks/retries", INTEGER, 3, "How many times a failed webhook POST is retried.",
           minimum=0, maximum=20),
    Option("interface/webhooks/timeout", FLOAT, 10.0, "Seconds to wait for a webhook endpoint to answer.",
           minimum=0.1),
    # --- logs and the process ------------------------------------------------
    Option("logs/debug-level", INTEGER, 4, "How chatty the log is: 0 quiet ... 20 everything.", minimum=0, maximum=20),
    Option("logs/api-calls", BOOLEAN, False, "Log every API call with its execution time."),
    Option("process/worker-threads", INTEGER, 4,
           "Size of the thread pool for encryption, erasure coding, hashing and disk I/O.",
           minimum=1, maximum=64, restart_needed=True),
    # --- identity and keys -----------------------------------------------------
    Option("personal/private-key-size", INTEGER, 3072, "Size in bits of newly generated RSA keys.",
           choices=(2048, 3072, 4096)),
    Option("personal/identity-servers", STRING_LIST, [],
           "Identity servers (host:port) to register a new identity on."),
    # --- paths -----------------------------------------------------------------
    Option("paths/restore", STRING, "", "Default folder downloads are written to (empty: your home folder)."),
    # --- network -----------------------------------------------------------------
    Option(TCP_PORT_KEY, INTEGER, 7771, "TCP port peers send packets to.", **_PORT),
    Option(TCP_INTERFACE_KEY, STRING, "127.0.0.1",
           "Address the packet transport listens on (0.0.0.0: every interface; the API keeps "
           "interface/api/interface).",
           pattern=_HOST),
    Option("services/identity-server/web-port", INTEGER, 8084, "HTTP port of this node's identity server.", **_PORT),
    Option("services/identity-server/host", STRING, "127.0.0.1", "Host name written into identities served here.",
           pattern=_HOST),
    Option("services/entangled-dht/udp-port", INTEGER, 14441, "UDP port of the DHT node.", **_PORT),
    Option("services/entangled-dht/known-nodes", STRING_LIST, [], "DHT seed nodes as host:port."),
    Option("services/ip-port-responder/udp-port", INTEGER, 3478, "UDP port of the STUN server.", **_PORT),
    Option("services/stun-client/servers", STRING_LIST, [],
           "STUN servers (host:port) network_stun asks for this node's external address."),
    # --- storage market ------------------------------------------------------------
    Option("services/supplier/donated-space", DISK_SPACE, 8 * 1024 ** 3,
           "Disk space you donate to other users' encrypted blocks."),
    Option("services/customer/suppliers-number", INTEGER, 4, "How many suppliers to hire.", minimum=2, maximum=16),
    Option("services/customer/needed-space", DISK_SPACE, 1024 ** 3, "How much space to ask the suppliers for."),
    Option("services/backups/segment-size", DISK_SPACE, 4 * 1024 ** 2,
           "Size of the segments a file is split into before encryption and erasure coding.",
           minimum=64 * 1024, maximum=64 * 1024 ** 2),
    Option("services/backups/max-copies", INTEGER, 2, "How many versions of a file to keep.", minimum=1),
    # --- messaging ---------------------------------------------------------------
    Option("services/private-messages/nickname", STRING, "", "The nickname you hold in the DHT.",
           pattern=r"[A-Za-z0-9_.\-]{0,64}"),
)
