"""ESPnet integration: the vitals measured after every validation of ESPnet HuBERT / SSL
pretraining, without editing recipes or ESPnet.

Entry points (drop-in replacements of ESPnet's, with ``--vitals_config`` / ``vitals:``):

* ``python -m sslvitals.integrations.espnet.hubert_train`` for ``espnet2.bin.hubert_train``;
* ``python -m sslvitals.integrations.espnet.ssl_train`` for ``espnet2.bin.ssl_train``;
* ``python -m sslvitals.integrations.espnet.python``: an interpreter stand-in for a recipe's
  ``--python`` option that sends ``-m espnet2.bin.hubert_train`` / ``ssl_train`` to the two
  above and runs everything else with the real interpreter.

Modules: :mod:`.options` (configuration and probe, no ESPnet import), :mod:`.forward` (the
unmasked forward pass), :mod:`.session` (measure, schedule, record), :mod:`.trainer`
(``VitalsTrainer``), :mod:`.tasks` (``VitalsHubertTask``, ``VitalsSSLTask``), :mod:`.cli`
(``sslvitals espnet-config``). Importing this package does not import ESPnet.
"""
from __future__ import annotations

__all__ = ["ENTRY_MODULES"]

#: ESPnet entry module -> the sslvitals module that replaces it.
ENTRY_MODULES: dict[str, str] = {
    "espnet2.bin.hubert_train": "sslvitals.integrations.espnet.hubert_train",
    "espnet2.bin.ssl_train": "sslvitals.integrations.espnet.ssl_train",
}
