"""The benchmarks' provenance record: UniversalSeg.provenance (the demo writes the same record)."""
from UniversalSeg.provenance import cpu_model, git_commit, provenance  # noqa: F401
