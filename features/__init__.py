"""Feature pipelines: source adapters, geography harmonisation, panel and feature matrices."""
