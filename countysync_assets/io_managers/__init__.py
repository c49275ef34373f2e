"""IO managers, one per output format, and the export IO manager that combines them."""
