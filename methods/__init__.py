"""Temporal-aggregation methods. Importing this package registers every method part in
``harness.aggregation.REGISTRY``; each module holds one concept (an alignment, a fusion or an
aggregator)."""
