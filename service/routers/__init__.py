"""HTTP routers, one per concern: inspection, categories, health and metrics."""
