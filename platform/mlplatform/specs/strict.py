"""The base of every spec section: unknown keys are errors (a typo must not be ignored), values frozen."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
