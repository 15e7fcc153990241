"""sslvitals: label-free predictors of downstream quality for self-supervised speech models.

Core modules (``metrics``, ``streaming``, ``hooks``, ``monitor``) import only numpy, scipy and
torch; toolkit code lives in ``sslvitals.integrations.<toolkit>`` and is imported only there.
"""
from sslvitals._version import __version__
from sslvitals.errors import SSLVitalsError
from sslvitals.keys import metric_key, parse_key

__all__ = ["__version__", "SSLVitalsError", "metric_key", "parse_key"]
