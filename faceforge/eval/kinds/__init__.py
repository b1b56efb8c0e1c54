"""Benchmark kinds of ``faceforge eval --benchmark KIND:ARGS``, registered in :data:`BENCHMARK_KINDS`.

Importing this package registers the built-in kinds in this order: ``lfw``, ``bin``, ``quality``, ``qualityall``
(pairs), ``allpairs``, ``ident`` (folders), ``bias``, ``biaspairs`` (bias), ``fgnet``, ``cacdvs``, ``agegap`` (age),
``ijb``, ``robust`` (verification under attack) and ``lowres`` (any pairs benchmark at a lower resolution).  A new kind is a :class:`~faceforge.eval.kinds.base.BenchmarkKind` subclass registered
with ``@BENCHMARK_KINDS.register("name")``.
"""

# registration order decides the order of the accepted forms in error messages
from faceforge.eval.kinds import pairs  # noqa: F401, I001
from faceforge.eval.kinds import folders  # noqa: F401
from faceforge.eval.kinds import bias  # noqa: F401
from faceforge.eval.kinds import age  # noqa: F401
from faceforge.eval.kinds import ijb  # noqa: F401
from faceforge.eval.kinds import robust  # noqa: F401
from faceforge.eval.kinds import lowres  # noqa: F401
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
)

__all__ = ["BENCHMARK_KINDS", "BenchmarkKind", "BenchmarkSpec", "BenchmarkSpecError", "RunContext"]
