"""Command implementations of the ``showerformer`` CLI, one module per topic; imports stay light."""
