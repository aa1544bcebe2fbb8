"""The ONE route table: every API method, its verb, path, parameters and meaning.

REST, WebSocket, the CLI, the OpenAPI document and docs/api.md are generated
from :data:`ROUTES` and :data:`LEGACY` (the legacy names, in
:mod:`bitnode.interface.routes_legacy`; the types are in
:mod:`bitnode.interface.route_types`). ``tests/interface/test_routes.py``
checks the table against ``spec/api-v1-methods.tsv``.

A route's handler is the method of the same name on
:class:`bitnode.interface.api.API`, defined in the module its ``impl`` names
(checked by ``tests/interface/test_routes.py``); what that module calls, and
what those services depend on, is the map in ``docs/architecture.md``. A route
whose handler does not exist yet answers 501 "<method> is not implemented yet".
"""

from __future__ import annotations

from bitnode.interface.route_types import (
    BOOL,
    FLOAT,
    INT,
    JSON,
    LIST,
    REQUIRED,
    STR,
    Param,
    ParamType,
    Route,
)
from bitnode.interface.routes_legacy import LEGACY, Alias

# Callers import the whole vocabulary from here.
__all__ = ["BOOL", "FLOAT", "INT", "JSON", "LIST", "REQUIRED", "STR", "Alias", "LEGACY", "Param", "ParamType",
           "ROUTES", "Route"]

R, P = Route, Param

# Where each method is implemented (``impl=``): the API module that defines it (one hop from here).
# Each calls the services it imports; their declared dependencies are in docs/architecture.md.
API_ACCESS = "bitnode.interface.api_access"
API_CORE = "bitnode.interface.api"
API_DHT = "bitnode.interface.api_dht"
API_FILES = "bitnode.interface.api_files"
API_GROUPS = "bitnode.interface.api_groups"
API_IDENTITY = "bitnode.interface.api_identity"
API_MARKET = "bitnode.interface.api_market"
API_MESSAGES = "bitnode.interface.api_messages"
API_NETWORK = "bitnode.interface.api_network"
API_NICKNAMES = "bitnode.interface.api_nicknames"
API_SHARES = "bitnode.interface.api_shares"
API_STUN = "bitnode.interface.api_stun"

ROUTES: tuple[Route, ...] = (
    R("process_stop", "GET", "process/stop/v1", "Stop the main process immediately.", mutating=True, impl=API_CORE,
      params=(
      )),
    R("process_restart", "GET", "process/restart/v1", "Restart the main process.", mutating=True, impl=API_CORE,
      params=(
      )),
    R("process_health", "GET", "process/health/v1", "Returns positive response if engine process is running. This method suppose to be used for health checks.", impl=API_CORE,
      params=(
      )),
    R("process_info", "GET", "process/info/v1", "Returns overall information about current process. This method can be used for live monitoring and statistics.", impl=API_CORE,
      params=(
      )),
    R("process_debug", "GET", "process/debug/v1", "Execute a breakpoint inside the main thread and start Python shell using standard pdb.set_trace() debugger method.", mutating=True, impl=API_CORE,
      params=(
      )),
    R("config_get", "GET", "config/get/v1", "Returns current key/value from the program settings.", impl=API_CORE,
      params=(
        P("key", STR, REQUIRED),
        P("include_info", BOOL, False),
        P("default", JSON, None, description="legacy: value to answer for an unknown key instead of 404"),
      )),
    R("config_set", "POST", "config/set/v1", "Set a value for given key option.", mutating=True, impl=API_CORE,
      params=(
        P("key", STR, REQUIRED),
        P("value", JSON, REQUIRED),
      )),
    R("configs_list", "GET", "config/list/v1", "Provide detailed info about all program settings.", impl=API_CORE,
      params=(
        P("sort", BOOL, False),
        P("include_info", BOOL, False),
      )),
    R("configs_tree", "GET", "config/tree/v1", "Returns all options as a tree structure, can be more suitable for UI operations.", impl=API_CORE,
      params=(
        P("include_info", BOOL, False),
      )),
    R("identity_get", "GET", "identity/get/v1", "Returns your identity info.", impl=API_IDENTITY,
      params=(
        P("include_xml_source", BOOL, False),
      )),
    R("identity_create", "POST", "identity/create/v1", "Generates new private key and creates new identity for you to be able to communicate with other nodes in the network.", mutating=True, impl=API_IDENTITY,
      params=(
        P("username", STR, REQUIRED),
        P("preferred_servers", LIST, ()),
        P("join_network", BOOL, False),
      )),
    R("identity_backup", "POST", "identity/backup/v1", "Creates local file at destination_filepath on your disk drive with a backup copy of your private key and recent IDURL.", mutating=True, impl=API_IDENTITY,
      params=(
        P("destination_filepath", STR, REQUIRED),
      )),
    R("identity_recover", "POST", "identity/recover/v1", "Restores your identity from backup copy.", mutating=True, impl=API_IDENTITY,
      params=(
        P("private_key_source", STR, REQUIRED),
        P("known_idurl", STR, None),
        P("join_network", BOOL, False),
      )),
    R("identity_erase", "DELETE", "identity/erase/v1", "Method will erase current identity file and the private key (optionally). All network services will be stopped first.", mutating=True, impl=API_IDENTITY,
      params=(
        P("erase_private_key", BOOL, False),
      )),
    R("identity_rotate", "PUT", "identity/rotate/v1", "Rotate your identity sources and republish identity file on another ID server even if current ID servers are healthy.", mutating=True, impl=API_IDENTITY,
      params=(
      )),
    R("identity_cache_list", "GET", "identity/cache/list/v1", "Returns list of all cached locally identity files received from other users.", impl=API_IDENTITY,
      params=(
      )),
    R("key_get", "GET", "key/get/v1", "Returns details of the registered public or private key.", impl=API_IDENTITY,
      params=(
        P("key_id", STR, REQUIRED),
        P("include_private", BOOL, False),
      )),
    R("keys_list", "GET", "key/list/v1", "List details for all registered public and private keys.", impl=API_IDENTITY,
      params=(
        P("sort", BOOL, False),
        P("include_private", BOOL, False),
      )),
    R("key_create", "POST", "key/create/v1", "Generate new RSA private key and add it to the list of registered keys with a new key_id.", mutating=True, impl=API_IDENTITY,
      params=(
        P("key_alias", STR, REQUIRED),
        P("key_size", INT, None),
        P("label", STR, ''),
        P("include_private", BOOL, False),
      )),
    R("key_label", "POST", "key/label/v1", "Set new label for the given key.", mutating=True, impl=API_IDENTITY,
      params=(
        P("key_id", STR, REQUIRED),
        P("label", STR, REQUIRED),
      )),
    R("key_erase", "DELETE", "key/erase/v1", "Unregister and remove given key from the list of known keys and erase local file.", mutating=True, impl=API_IDENTITY,
      params=(
        P("key_id", STR, REQUIRED),
      )),
    R("key_share", "PUT", "key/share/v1", "Connects to remote user and transfer given public or private key to that node. This way you can share access to files/groups/resources with other users in the network.", mutating=True, impl=API_ACCESS,
      params=(
        P("key_id", STR, REQUIRED),
        P("trusted_user_id", STR, REQUIRED),
        P("include_private", BOOL, False),
        P("timeout", FLOAT, 10),
      )),
    R("key_audit", "POST", "key/audit/v1", "Connects to remote node identified by untrusted_user_id parameter and request audit of given public or private key key_id on that node.", mutating=True, impl=API_ACCESS,
      params=(
        P("key_id", STR, REQUIRED),
        P("untrusted_user_id", STR, REQUIRED),
        P("is_private", BOOL, False),
        P("timeout", FLOAT, 10),
      )),
    R("files_sync", "GET", "file/sync/v1", "This should re-start \"data synchronization\" process with your remote suppliers.", mutating=True, impl=API_FILES,
      params=(
      )),
    R("files_list", "GET", "file/list/v1", "Returns list of known files registered in the catalog under given remote_path folder. By default returns items from root of the catalog.", impl=API_FILES,
      params=(
        P("remote_path", STR, None),
        P("key_id", STR, None),
        P("recursive", BOOL, True),
        P("all_customers", BOOL, False),
        P("include_uploads", BOOL, False),
        P("include_downloads", BOOL, False),
        P("offset", INT, 0),
        P("limit", INT, None),
      )),
    R("file_exists", "GET", "file/exists/v1", "Returns positive result if file or folder with such remote_path already exists in the catalog.", impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
      )),
    R("file_info", "GET", "file/info/v1", "Returns detailed info about given file or folder in the catalog.", impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
        P("include_uploads", BOOL, True),
        P("include_downloads", BOOL, True),
      )),
    R("file_create", "POST", "file/create/v1", "Creates new file in the catalog, but do not upload any data to the network yet.", mutating=True, impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
        P("as_folder", BOOL, False),
        P("exist_ok", BOOL, False),
        P("force_path_id", STR, None),
      )),
    R("file_delete", "DELETE", "file/delete/v1", "Removes virtual file or folder from the catalog and also notifies your remote suppliers to clean up corresponding uploaded data.", mutating=True, impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
      )),
    R("files_uploads", "GET", "file/upload/v1", "Returns a list of currently running uploads and list of pending items to be uploaded.", impl=API_FILES,
      params=(
        P("include_running", BOOL, True),
        P("include_pending", BOOL, True),
      )),
    R("file_upload_start", "POST", "file/upload/start/v1", "Starts a new file or folder (including all sub-folders and files) upload from local_path on your disk drive to the virtual location remote_path in the catalog. New \"version\" of the data will be created for given catalog item and uploading task started.", mutating=True, impl=API_FILES,
      params=(
        P("local_path", STR, REQUIRED),
        P("remote_path", STR, REQUIRED),
        P("wait_result", BOOL, False),
        P("wait_finish", BOOL, False),
        P("open_share", BOOL, False),
      )),
    R("file_upload_stop", "POST", "file/upload/stop/v1", "Useful method if you need to interrupt and cancel already running uploading task.", mutating=True, impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
      )),
    R("files_downloads", "GET", "file/download/v1", "Returns a list of currently running downloading tasks.", impl=API_FILES,
      params=(
      )),
    R("file_download_start", "POST", "file/download/start/v1", "Download data from remote suppliers to your local machine.", mutating=True, impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
        P("destination_path", STR, None),
        P("wait_result", BOOL, False),
        P("open_share", BOOL, True),
      )),
    R("file_download_stop", "POST", "file/download/stop/v1", "Abort currently running restore process.", mutating=True, impl=API_FILES,
      params=(
        P("remote_path", STR, REQUIRED),
      )),
    R("file_explore", "GET", "file/explore/v1", "Useful method to be executed from the UI right after downloading is finished.", impl=API_FILES,
      params=(
        P("local_path", STR, REQUIRED),
      )),
    R("shares_list", "GET", "share/list/v1", "Returns a list of registered \"shares\" - encrypted locations where you can upload/download files.", impl=API_SHARES,
      params=(
        P("only_active", BOOL, False),
        P("include_mine", BOOL, True),
        P("include_granted", BOOL, True),
      )),
    R("share_create", "POST", "share/create/v1", "Creates a new \"share\" - virtual location where you or other users can upload/download files.", mutating=True, impl=API_SHARES,
      params=(
        P("owner_id", STR, None),
        P("key_size", INT, None),
        P("label", STR, ''),
      )),
    R("share_delete", "DELETE", "share/delete/v1", "Stop the active share identified by the key_id and erase the private key.", mutating=True, impl=API_SHARES,
      params=(
        P("key_id", STR, REQUIRED),
      )),
    R("share_grant", "PUT", "share/grant/v1", "Provide access to given share identified by key_id to another trusted user.", mutating=True, impl=API_SHARES,
      params=(
        P("key_id", STR, REQUIRED),
        P("trusted_user_id", STR, REQUIRED),
        P("timeout", FLOAT, 30),
        P("mode", STR, "rw", description="rw: the user uploads and downloads (the spec's behaviour); ro: downloads only"),
      )),
    R("share_revoke", "PUT", "share/revoke/v1", "Take a member off a share for good: the owner's suppliers refuse it from "
      "now on, the share key is renewed (what is stored is re-keyed in the owner's catalog, no block is uploaded again) "
      "and the remaining members get the new key.", mutating=True, beyond_spec=True, impl=API_SHARES,
      params=(
        P("key_id", STR, REQUIRED),
        P("trusted_user_id", STR, REQUIRED),
        P("timeout", FLOAT, 30),
      )),
    R("share_open", "PUT", "share/open/v1", "Activates given share and initiate required connections to remote suppliers to make possible to upload and download shared files.", mutating=True, impl=API_SHARES,
      params=(
        P("key_id", STR, REQUIRED),
      )),
    R("share_close", "PUT", "share/close/v1", "Disconnects and deactivate given share location.", mutating=True, impl=API_SHARES,
      params=(
        P("key_id", STR, REQUIRED),
      )),
    R("share_history", "GET", "share/history/v1", "Method is not implemented yet.", impl=API_SHARES,
      params=(
      )),
    R("groups_list", "GET", "group/list/v1", "Returns a list of registered message groups.", impl=API_GROUPS,
      params=(
        P("only_active", BOOL, False),
        P("include_mine", BOOL, True),
        P("include_granted", BOOL, True),
      )),
    R("group_create", "POST", "group/create/v1", "Creates a new messaging group.", mutating=True, impl=API_GROUPS,
      params=(
        P("creator_id", STR, None),
        P("key_size", INT, None),
        P("label", STR, ''),
        P("timeout", FLOAT, 20),
      )),
    R("group_info", "GET", "group/info/v1", "Returns detailed info about the message group identified by group_key_id.", impl=API_GROUPS,
      params=(
        P("group_key_id", STR, REQUIRED),
      )),
    R("group_join", "POST", "group/join/v1", "Activates given messaging group to be able to receive streamed messages or send a new message to the group.", mutating=True, impl=API_GROUPS,
      params=(
        P("group_key_id", STR, REQUIRED),
      )),
    R("group_leave", "DELETE", "group/leave/v1", "Deactivates given messaging group. If erase_key=True will also erase the private key related to that group.", mutating=True, impl=API_GROUPS,
      params=(
        P("group_key_id", STR, REQUIRED),
        P("erase_key", BOOL, False),
      )),
    R("group_share", "PUT", "group/share/v1", "Provide access to given group identified by group_key_id to another trusted user.", mutating=True, impl=API_GROUPS,
      params=(
        P("group_key_id", STR, REQUIRED),
        P("trusted_user_id", STR, REQUIRED),
        P("timeout", FLOAT, 30),
        P("admin", BOOL, None, description="the creator also makes the user an admin (true) or not (false)"),
      )),
    R("group_member_remove", "DELETE", "group/member/remove/v1", "Remove a member from a message group: the group's message key is rotated, so the removed member cannot read what is sent after.", mutating=True, impl=API_GROUPS,
      beyond_spec=True,
      params=(
        P("group_key_id", STR, REQUIRED),
        P("member_id", STR, REQUIRED),
        P("timeout", FLOAT, 30),
      )),
    R("friends_list", "GET", "friend/list/v1", "Returns list of registered correspondents.", impl=API_ACCESS,
      params=(
      )),
    R("friend_add", "POST", "friend/add/v1", "Add user to the list of correspondents.", mutating=True, impl=API_ACCESS,
      params=(
        P("trusted_user_id", STR, REQUIRED),
        P("alias", STR, ''),
        P("share_person_key", BOOL, True),
      )),
    R("friend_remove", "DELETE", "friend/remove/v1", "Removes given user from the list of correspondents.", mutating=True, impl=API_ACCESS,
      params=(
        P("user_id", STR, REQUIRED),
      )),
    R("user_ping", "GET", "user/ping/v1", "Sends Identity packet to remote peer and wait for an Ack packet to check connection status.", impl=API_NETWORK,
      params=(
        P("user_id", STR, REQUIRED),
        P("timeout", FLOAT, 15),
        P("retries", INT, 2),
      )),
    R("user_status", "GET", "user/status/v1", "Returns short info about current on-line status of the given user.", impl=API_NETWORK,
      params=(
        P("user_id", STR, REQUIRED),
      )),
    R("user_status_check", "GET", "user/status/check/v1", "Returns current online status of a user and only if node is known but disconnected performs \"ping\" operation.", impl=API_NETWORK,
      params=(
        P("user_id", STR, REQUIRED),
        P("timeout", FLOAT, 5),
      )),
    R("user_search", "GET", "user/search/v1", "", impl=API_NICKNAMES,
      params=(
        P("nickname", STR, REQUIRED),
        P("attempts", INT, 1),
      )),
    R("user_observe", "GET", "user/observe/v1", "Reads all records registered for given nickname in the DHT network.", impl=API_NICKNAMES,
      params=(
        P("nickname", STR, REQUIRED),
        P("attempts", INT, 3),
      )),
    R("message_history", "GET", "message/history/v1", "Returns chat communications history stored for given user or messaging group.", impl=API_MESSAGES,
      params=(
        P("recipient_id", STR, None),
        P("sender_id", STR, None),
        P("message_type", STR, None),
        P("offset", INT, 0),
        P("limit", INT, 100),
      )),
    R("message_conversations_list", "GET", "message/conversation/v1", "Returns list of all known conversations with other users. Parameter message_types can be used to select conversations of specific types: \"groupmessage\", \"privatemessage\", \"personal_message\".", impl=API_MESSAGES,
      params=(
        P("message_types", LIST, ()),
        P("offset", INT, 0),
        P("limit", INT, 100),
      )),
    R("message_send", "POST", "message/send/v1", "Sends a private message to remote peer, recipient_id is a string with a nickname, global_id or IDURL of the remote user.", mutating=True, impl=API_MESSAGES,
      params=(
        P("recipient_id", STR, REQUIRED),
        P("data", JSON, REQUIRED),
        P("ping_timeout", FLOAT, 30),
        P("message_ack_timeout", FLOAT, 15),
      )),
    R("message_send_group", "POST", "message/send/group/v1", "Sends a \"group_message\" to a group of users.", mutating=True, impl=API_GROUPS,
      params=(
        P("group_key_id", STR, REQUIRED),
        P("data", JSON, REQUIRED),
      )),
    R("message_receive", "GET", "message/receive/{consumer_callback_id}/v1", "This method can be used by clients to listen and process streaming messages.", impl=API_MESSAGES,
      params=(
        P("consumer_callback_id", STR, REQUIRED),
        P("direction", STR, 'incoming'),
        P("message_types", LIST, 'private_message,group_message'),
        P("polling_timeout", FLOAT, 60),
      )),
    R("suppliers_list", "GET", "supplier/list/v1", "This method returns a list of your suppliers. Those nodes stores your encrypted file or file uploaded by other users that still belongs to you.", impl=API_MARKET,
      params=(
        P("customer_id", STR, None),
        P("verbose", BOOL, False),
      )),
    R("supplier_change", "POST", "supplier/change/v1", "The method will execute a fire/hire process for given supplier. You can specify which supplier to be replaced by position or ID.", mutating=True, impl=API_MARKET,
      params=(
        P("position", INT, None),
        P("supplier_id", STR, None),
        P("new_supplier_id", STR, None, aliases=("new_idurl",)),
        P("index_or_idurl", STR, None, description="legacy: supplier position or IDURL"),
      )),
    R("suppliers_ping", "POST", "supplier/ping/v1", "Sends short requests to all suppliers to verify current connection status.", mutating=True, impl=API_MARKET,
      params=(
      )),
    R("suppliers_dht_lookup", "GET", "supplier/list/dht/v1", "Scans DHT network for key-value pairs related to given customer and returns a list its suppliers.", impl=API_MARKET,
      params=(
        P("customer_id", STR, None),
      )),
    R("customers_list", "GET", "customer/list/v1", "Method returns list of your customers - nodes for whom you are storing data on that host.", impl=API_MARKET,
      params=(
        P("verbose", BOOL, False),
      )),
    R("customer_reject", "DELETE", "customer/reject/v1", "Stop supporting given customer, remove all related files from local disc, close connections with that node.", mutating=True, impl=API_MARKET,
      params=(
        P("customer_id", STR, REQUIRED, aliases=("idurl",)),
      )),
    R("customers_ping", "POST", "customer/ping/v1", "Check current on-line status of all customers.", mutating=True, impl=API_MARKET,
      params=(
      )),
    R("space_donated", "GET", "space/donated/v1", "Returns detailed info about quotas and usage of the storage space you donated to your customers.", impl=API_MARKET,
      params=(
      )),
    R("space_consumed", "GET", "space/consumed/v1", "Returns info about current usage of the storage space provided by your suppliers.", impl=API_MARKET,
      params=(
      )),
    R("space_local", "GET", "space/local/v1", "Returns info about current usage of your local disk drive.", impl=API_MARKET,
      params=(
      )),
    R("services_list", "GET", "service/list/v1", "Returns detailed info about all currently running network services.", impl=API_CORE,
      params=(
        P("with_configs", BOOL, False),
      )),
    R("service_info", "GET", "service/info/{service_name}/v1", "Returns detailed info about single service.", impl=API_CORE,
      params=(
        P("service_name", STR, REQUIRED),
      )),
    R("service_start", "POST", "service/start/{service_name}/v1", "Starts given service immediately.", mutating=True, impl=API_CORE,
      params=(
        P("service_name", STR, REQUIRED),
      )),
    R("service_stop", "POST", "service/stop/{service_name}/v1", "Stop given service immediately.", mutating=True, impl=API_CORE,
      params=(
        P("service_name", STR, REQUIRED),
      )),
    R("service_restart", "POST", "service/restart/{service_name}/v1", "This method will stop given service and start it again, but only if it is already enabled. It will not modify corresponding option for that service in the program settings.", mutating=True, impl=API_CORE,
      params=(
        P("service_name", STR, REQUIRED),
        P("wait_timeout", FLOAT, 10),
      )),
    R("packets_list", "GET", "packet/list/v1", "Returns list of incoming and outgoing signed packets running at the moment.", impl=API_NETWORK,
      params=(
      )),
    R("packets_stats", "GET", "packet/stats/v1", "Returns detailed info about overall network usage.", impl=API_NETWORK,
      params=(
      )),
    R("transfers_list", "GET", "transfer/list/v1", "Returns list of current data fragments transfers to/from suppliers.", impl=API_FILES,
      params=(
        P("include_finished", BOOL, False),
      )),
    R("connections_list", "GET", "connection/list/v1", "Returns list of opened/active network connections.", impl=API_NETWORK,
      params=(
        P("protocols", LIST, None, aliases=("wanted_protos",)),
      )),
    R("streams_list", "GET", "stream/list/v1", "Returns list of running streams of data fragments with recent upload/download progress percentage.", impl=API_NETWORK,
      params=(
        P("protocols", LIST, None, aliases=("wanted_protos",)),
      )),
    R("queues_list", "GET", "queue/list/v1", "Returns list of registered streaming queues.", impl=API_GROUPS,
      params=(
      )),
    R("queue_consumers_list", "GET", "queue/consumer/list/v1", "Returns list of registered queue consumers.", impl=API_GROUPS,
      params=(
      )),
    R("queue_producers_list", "GET", "queue/producer/list/v1", "Returns list of registered queue producers.", impl=API_GROUPS,
      params=(
      )),
    R("event_send", "POST", "event/send/{event_id}/v1", "Method will generate and inject a new event inside the main process.", mutating=True, impl=API_CORE,
      params=(
        P("event_id", STR, REQUIRED),
        P("data", JSON, None),
      )),
    R("event_listen", "GET", "event/listen/{consumer_callback_id}/v1", "This method can be used by clients to listen and process all events fired inside the main process.", impl=API_CORE,
      params=(
        P("consumer_callback_id", STR, REQUIRED),
        P("since", INT, None, description="resume after this event sequence id"),
        P("polling_timeout", FLOAT, 60.0, description="seconds to wait for an event before answering empty"),
      )),
    R("network_stun", "GET", "network/stun/v1", "Begins network STUN process to detect your network configuration and current external IP address of that host.", impl=API_STUN,
      params=(
        P("udp_port", INT, None),
        P("dht_port", INT, None),
      )),
    R("network_reconnect", "GET", "network/reconnect/v1", "Method can be used to refresh network status and restart all internal connections.", mutating=True, impl=API_NETWORK,
      params=(
      )),
    R("network_connected", "GET", "network/connected/v1", "Method can be used by clients to ensure BitDust application is connected to other nodes in the network.", impl=API_NETWORK,
      params=(
        P("wait_timeout", FLOAT, 5),
      )),
    R("network_status", "GET", "network/status/v1", "Returns detailed info about current network status, protocols and active connections.", impl=API_NETWORK,
      params=(
        P("suppliers", BOOL, False),
        P("customers", BOOL, False),
        P("cache", BOOL, False),
        P("tcp", BOOL, False),
        P("udp", BOOL, False),
        P("proxy", BOOL, False),
        P("dht", BOOL, False),
      )),
    R("network_configuration", "GET", "network/configuration/v1", "Returns details about network services.", impl=API_NETWORK,
      params=(
      )),
    R("dht_node_find", "GET", "dht/node/find/v1", "Lookup \"closest\" (in terms of hashes and cryptography) DHT nodes to a given node_id_64 value.", impl=API_DHT,
      params=(
        P("node_id_64", STR, None),
        P("layer_id", INT, 0),
      )),
    R("dht_user_random", "GET", "dht/user/random/v1", "Pick random live nodes from BitDust network.", impl=API_DHT,
      params=(
        P("layer_id", INT, 0),
        P("count", INT, 1),
      )),
    R("dht_value_get", "GET", "dht/value/get/v1", "Fetch single key/value record from DHT network.", impl=API_DHT,
      params=(
        P("key", STR, REQUIRED),
        P("record_type", STR, 'skip_validation'),
        P("layer_id", INT, 0),
        P("use_cache_ttl", INT, None),
      )),
    R("dht_value_set", "POST", "dht/value/set/v1", "Writes given key/value record into DHT network. Input parameter value must be a JSON value.", mutating=True, impl=API_DHT,
      params=(
        P("key", STR, REQUIRED),
        P("value", JSON, REQUIRED),
        P("expire", INT, None),
        P("record_type", STR, 'skip_validation'),
        P("layer_id", INT, 0),
      )),
    R("dht_local_db_dump", "GET", "dht/db/dump/v1", "Method used for testing purposes, returns full list of all key/values stored locally on that DHT node.", impl=API_DHT,
      params=(
      )),
    R("automats_list", "GET", "automat/list/v1", "Returns a list of all currently running state machines.", impl=API_CORE,
      params=(
      )),
)
