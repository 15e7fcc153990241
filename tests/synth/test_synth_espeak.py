"""The ctypes binding to eSpeak NG: audio and the synthesiser's phoneme events."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sslvitals.errors import SSLVitalsError
from sslvitals.synth.espeak import VoiceSettings, espeak_available, get_synthesizer, is_pause

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="eSpeak NG library (libespeak-ng.so.1) is not installed"
)


def test_synthesis_returns_audio_and_ordered_phoneme_events():
    synth = get_synthesizer()
    out = synth.synthesize("She sells sea shells.", VoiceSettings("en-us+f2", rate=170))
    assert out.sample_rate == 22050
    assert out.audio.dtype == np.int16 and out.audio.ndim == 1
    assert 0.8 < len(out.audio) / out.sample_rate < 5.0
    starts = [e.sample for e in out.phones]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= len(out.audio)
    speech = [e.phone for e in out.phones if not is_pause(e.phone)]
    # "she sells sea shells": S i: s E l z s i: S E l z
    assert speech.count("S") == 2 and speech.count("s") >= 2 and "l" in speech
    assert len(out.word_starts) == 4


def test_voice_and_rate_change_the_output():
    synth = get_synthesizer()
    slow = synth.synthesize("The harbor was quiet tonight.", VoiceSettings("en-us+m3", rate=120))
    fast = synth.synthesize("The harbor was quiet tonight.", VoiceSettings("en-us+m3", rate=240))
    assert len(slow.audio) > 1.5 * len(fast.audio)
    other = synth.synthesize("The harbor was quiet tonight.", VoiceSettings("en+f4", rate=240))
    assert [e.phone for e in other.phones] != [e.phone for e in fast.phones] or not np.array_equal(
        other.audio[: len(fast.audio)], fast.audio[: len(other.audio)]
    )


_FRESH = """
import hashlib
from sslvitals.synth.espeak import VoiceSettings, get_synthesizer
out = get_synthesizer().synthesize("Every tiny turtle waited.", VoiceSettings("en-029+klatt2", pitch=40))
print(len(out.audio), hashlib.sha256(out.audio.tobytes()).hexdigest(), [(e.sample, e.phone) for e in out.phones])
"""


def test_fresh_processes_give_identical_output():
    runs = [subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) > 80


def test_unknown_voice_is_an_sslvitals_error():
    with pytest.raises(SSLVitalsError, match="no voice"):
        get_synthesizer().synthesize("hello", VoiceSettings("xx-nonexistent"))
