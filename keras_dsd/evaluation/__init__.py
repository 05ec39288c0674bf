"""Evaluating a trained generator: what `examples/evaluate.py` runs.

- `sampling`: load a model in float32, sample it in resumable chunks and
  export the ADM evaluator's `.npz` (`generate_samples`).
- `reference`: check, read and score reference images, and write or read
  their Fréchet statistics (`inspect_reference`, `score_reference`).
- `metric_set`: the metrics (`METRICS`) on shared feature extractors, fed
  in one pass (`build_extractors`, `MetricSet`).
- `files`: atomic `.npz`/JSON writes, `.npz` headers, file digests.

This package sits above `models` and `metrics` and imports both; nothing
in `models`, `metrics` or `utils` imports it.

Example:

```python
from keras_dsd import evaluation

reference = evaluation.inspect_reference("reference.npz", ["fd-effnet"])
metric_set = evaluation.MetricSet(
    ["fd-effnet"], evaluation.build_extractors(["fd-effnet"])
)
evaluation.score_reference(metric_set, "reference.npz", reference)
model = evaluation.load_generator("dsd_digits.keras")
record, chunks = evaluation.generate_samples(model, "out", num_samples=100)
print(metric_set.score(evaluation.iter_samples(chunks)))
```
"""

from keras_dsd.evaluation.files import file_digest
from keras_dsd.evaluation.files import npz_headers
from keras_dsd.evaluation.files import save_npz
from keras_dsd.evaluation.files import write_json
from keras_dsd.evaluation.metric_set import FRECHET_METRICS
from keras_dsd.evaluation.metric_set import METRICS
from keras_dsd.evaluation.metric_set import NOTES
from keras_dsd.evaluation.metric_set import PR_FEATURES
from keras_dsd.evaluation.metric_set import RANDOM_INCEPTION
from keras_dsd.evaluation.metric_set import MetricSet
from keras_dsd.evaluation.metric_set import SharedPredictor
from keras_dsd.evaluation.metric_set import blas_single_thread
from keras_dsd.evaluation.metric_set import build_extractors
from keras_dsd.evaluation.metric_set import check_metric_names
from keras_dsd.evaluation.metric_set import extractors_needed
from keras_dsd.evaluation.metric_set import format_result
from keras_dsd.evaluation.reference import inspect_reference
from keras_dsd.evaluation.reference import iter_reference_images
from keras_dsd.evaluation.reference import read_reference_stats
from keras_dsd.evaluation.reference import score_reference
from keras_dsd.evaluation.reference import write_reference_stats
from keras_dsd.evaluation.sampling import as_float32
from keras_dsd.evaluation.sampling import check_manifest
from keras_dsd.evaluation.sampling import check_sample_counts
from keras_dsd.evaluation.sampling import chunk_path
from keras_dsd.evaluation.sampling import chunk_seed
from keras_dsd.evaluation.sampling import generate_chunks
from keras_dsd.evaluation.sampling import generate_samples
from keras_dsd.evaluation.sampling import iter_samples
from keras_dsd.evaluation.sampling import load_generator
from keras_dsd.evaluation.sampling import read_chunk
from keras_dsd.evaluation.sampling import write_samples_npz
