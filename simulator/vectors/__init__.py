"""Golden test vectors for RTL testbenches: export and verification.

``simulate export-vectors --out DIR`` writes, for N images, every layer's
input/output codes and parameters (npz + ``$readmemh`` hex + a checksummed
manifest + the QuantizedGraph); ``simulate verify-vectors DIR`` checks the files
and re-runs the simulator. Formats: `simulator.vectors.hexfile`,
`simulator.vectors.npzfile`, `simulator.vectors.manifest`.

Part of the composition root only through `simulator.cli` (imported lazily
by `export_main` to build the model); nothing here imports `reference`.
"""

from simulator.vectors.export import export_main, export_vectors
from simulator.vectors.verify import Mismatch, verify_main, verify_vectors

__all__ = ["export_main", "export_vectors", "verify_main", "verify_vectors", "Mismatch"]
