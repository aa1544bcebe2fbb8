"""The legacy method names (BitDust's older API) and how each maps onto a v1 route.

:data:`LEGACY` is served next to :data:`bitnode.interface.routes.ROUTES` (which
re-exports it): REST under ``legacy/<name>/v1``, WebSocket and the CLI by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitnode.interface.route_types import BOOL, FLOAT, JSON, STR, Param

P = Param


@dataclass(frozen=True)
class Alias:
    """A legacy method name routed to the same code.

    ``target`` is the v1 route it maps to, or the alias's own name when the
    API has a legacy-only method of that name; ``params`` is the legacy
    signature; ``rename`` maps legacy parameter names to the target's;
    ``fixed`` adds arguments; ``ignored`` parameters are accepted and dropped.
    """

    name: str
    target: str
    description: str
    params: tuple[Param, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def verbs(self) -> tuple[str, ...]:
        """Legacy names take GET (as they always did) and POST."""
        return ("GET", "POST")

    def to_target_kwargs(self, kwargs: dict) -> dict:
        """Translate already-validated legacy arguments into the target's."""
        names = dict(self.rename)
        out = {names.get(key, key): value for key, value in kwargs.items() if key not in self.ignored}
        out.update(self.fixed)
        return out

    @property
    def path(self) -> str:
        """REST path of the legacy name."""
        return f"legacy/{self.name}/v1"


LEGACY: tuple[Alias, ...] = (
    Alias("stop", "process_stop", "Stop the main process immediately."),
    Alias("restart", "process_restart", "Restart the main process (showgui is ignored: bitnode has no GUI).",
          params=(P("showgui", BOOL, False),), ignored=("showgui",)),
    Alias("reconnect", "network_reconnect", 'Sends "reconnect" to the network_connector automat.'),
    Alias("config_list", "configs_list", "All options and values from settings.", params=(P("sort", BOOL, False),)),
    Alias("backups_update", "files_sync", 'Sends "restart" to the backup_monitor automat.'),
    Alias("backups_list", "files_list", "The whole tree of files and folders in the catalog."),
    Alias("backups_id_list", "backups_id_list", "Only the items uploaded to suppliers, with their version ids."),
    Alias("backup_start_id", "backup_start_id", "Start uploading an item already in the catalog, by its path id.",
          params=(P("pathID", STR),)),
    Alias("backup_start_path", "backup_start_path", "Add a local file or folder to the catalog and upload it.",
          params=(P("path", STR), P("bind_local_path", BOOL, True))),
    Alias("backup_map_path", "backup_map_path", "Create a top-level catalog item for a local path.",
          params=(P("path", STR),)),
    Alias("backup_dir_add", "backup_dir_add", "Add a folder to the catalog without uploading.",
          params=(P("dirpath", STR),)),
    Alias("backup_file_add", "backup_file_add", "Add a single file to the catalog without uploading.",
          params=(P("filepath", STR),)),
    Alias("backup_tree_add", "backup_tree_add", "Add a folder tree to the catalog without uploading.",
          params=(P("dirpath", STR),)),
    Alias("backup_delete_local", "backup_delete_local", "Remove only the local files of one version.",
          params=(P("backupID", STR),)),
    Alias("backup_delete_id", "backup_delete_id", "Delete an item or version from the catalog and the suppliers.",
          params=(P("pathID_or_backupID", STR),)),
    Alias("backup_delete_path", "backup_delete_path", "Delete everything stored for a local path.",
          params=(P("localPath", STR),)),
    Alias("backups_queue", "files_uploads", "Uploads waiting to start.", fixed=(("include_running", False),)),
    Alias("backups_running", "files_uploads", "Uploads running now.", fixed=(("include_pending", False),)),
    Alias("backup_cancel_pending", "backup_cancel_pending", "Cancel a pending upload.", params=(P("path_id", STR),)),
    Alias("backup_abort_running", "file_upload_stop", "Abort a running upload.",
          params=(P("backup_id", STR),), rename=(("backup_id", "remote_path"),)),
    Alias("restore_single", "file_download_start", "Download an item from the suppliers.",
          params=(P("pathID_or_backupID_or_localPath", STR), P("destinationPath", STR, None)),
          rename=(("pathID_or_backupID_or_localPath", "remote_path"), ("destinationPath", "destination_path"))),
    Alias("restores_running", "files_downloads", "Downloads running now."),
    Alias("restore_abort", "file_download_stop", "Abort a running download.",
          params=(P("backup_id", STR),), rename=(("backup_id", "remote_path"),)),
    Alias("supplier_replace", "supplier_change", "Fire a supplier and hire a random replacement.",
          params=(P("index_or_idurl", STR),)),
    Alias("ping", "user_ping", "Send an Identity packet to a peer and wait for its Ack.",
          params=(P("idurl", STR), P("timeout", FLOAT, 10.0)), rename=(("idurl", "user_id"),)),
    Alias("set_my_nickname", "set_my_nickname", "Start nickname_holder to register and keep a nickname in the DHT.",
          params=(P("nickname", STR),)),
    Alias("find_peer_by_nickname", "user_observe", "Look up who holds a nickname in the DHT.",
          params=(P("nickname", STR),)),
    Alias("send_message", "message_send", "Send a text message to a peer.",
          params=(P("recipient", STR), P("message_body", JSON)),
          rename=(("recipient", "recipient_id"), ("message_body", "data"))),
    Alias("receive_one_message", "receive_one_message", "Wait for one incoming chat message."),
    Alias("broadcast_send_message", "broadcast_send_message", "Send a message to all peers.",
          params=(P("payload", JSON),)),
)
