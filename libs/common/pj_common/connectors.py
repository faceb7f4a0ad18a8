"""Which connectors exist and what each can do: the catalog is checked against this at load (so an
action can never be approved for a step no dispatcher can run), and the dispatcher provides exactly it."""

CONNECTOR_OPERATIONS: dict[str, frozenset[str]] = {
    "webhook": frozenset({"post"}),
    "github": frozenset({"create_branch", "put_file", "open_pull_request", "dispatch_workflow"}),
    "sharepoint": frozenset({"create_list_item", "upload_file"}),
    "slack": frozenset({"post_message"}),
}
