"""The errors of alert delivery."""


class DeliveryError(RuntimeError):
    """A destination did not take an alert (unreachable, refused it, or is not configured)."""


class NotConfiguredError(DeliveryError):
    """A destination lacks a setting or refuses its credentials: retrying cannot help."""
