"""The single exception class of sslvitals."""

__all__ = ["SSLVitalsError"]


class SSLVitalsError(Exception):
    """Raised for every problem sslvitals detects in its input or configuration.

    The message always names the problem and, where possible, how to fix it.
    Inside a training run, metric failures are caught, logged once and reported as NaN
    unless strict mode is on; configuration errors are raised at start-up.
    """
