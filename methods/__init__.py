"""Temporal-aggregation methods. Importing this package registers every method part in
``harness.aggregation.REGISTRY``; each module holds one concept (an alignment, a fusion or an
aggregator)."""

from methods import average, cosine_softmax, flow_warp, identity, stsn  # noqa: F401  (registration)
