"""The MLflow pyfunc wrapper of a platform model, logged as code ("models from code"), never pickled.

MLflow copies this file into each logged model and runs it on load; the model itself is the LightGBM
text file written by `mlplatform.core.training.save_model`, kept under the model's `artifacts`. Scoring
goes through `core.training.predict`, the same feature preparation as training, so
`mlflow.pyfunc.load_model("models:/<dataset>@champion").predict(frame)` matches the platform's own
predictions. Needs `mlplatform` importable where the model is loaded.
"""

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class LightGBMTextModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from mlplatform.contracts import MODEL_ARTIFACT_KEY
        from mlplatform.core.training import load_model

        self.model = load_model(context.artifacts[MODEL_ARTIFACT_KEY])

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from mlplatform.core.training import predict

        # Regression: values; binary: P(positive class); multiclass: n x k class probabilities.
        return predict(self.model, model_input)


mlflow.models.set_model(LightGBMTextModel())
