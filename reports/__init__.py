"""Design-review sweeps and their reports.

* `reports.sweep_config`: sweep YAML -> validated, frozen `SweepSpec`
  (models x recipe parameter grids x accelerator files).
* `reports.sweep`: ``simulate sweep`` -- runs every point (calibrate,
  quantize, fake-quant + integer simulator, cost model), caches one JSON per
  point by content hash, in parallel on processes or a Dask cluster.
* `reports.pareto`, `reports.figures`, `reports.review`: read only the result
  JSON; Pareto fronts, matplotlib figures and the markdown report.
"""
