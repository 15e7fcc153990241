"""eSpeak NG through its C library: audio plus the synthesiser's own phone timings.

The shared library ``libespeak-ng.so.1`` (Debian/Ubuntu package ``libespeak-ng1``, pulled in
by ``espeak-ng``) is driven with :mod:`ctypes` in synchronous mode. With phoneme events
switched on, the library calls back with audio buffers and a list of events; each
``espeakEVENT_PHONEME`` event carries the phoneme mnemonic and the sample index (at the
synthesiser's native rate, 22050 Hz) where the phoneme starts. Those start positions are the
labels: nothing is estimated afterwards.

Only the runtime library is needed (no header, no compiler). The structure layout below
follows ``speak_lib.h`` of eSpeak NG API revision 12 (espeak-ng 1.49-1.52).

The library keeps global state and is not thread-safe; use one :class:`EspeakSynthesizer`
per process (``get_synthesizer()`` caches one). That state also carries over from one
utterance to the next (pitch flutter phase, noise generator, echo buffer): the same text gives
the same samples only after the same history, e.g. in a fresh process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from sslvitals.errors import SSLVitalsError

__all__ = [
    "EspeakSynthesizer",
    "SynthOutput",
    "PhoneEvent",
    "VoiceSettings",
    "get_synthesizer",
    "espeak_available",
    "is_pause",
]

logger = logging.getLogger(__name__)

# Values from speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_EE_OK = 0

_LIBRARY_ENV = "SSLVITALS_ESPEAK_LIBRARY"


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def is_pause(mnemonic: str) -> bool:
    """True for eSpeak's pause pseudo-phonemes (``_``, ``_:``, ``_!``, ...)."""
    return mnemonic.startswith("_") or mnemonic == ""


@dataclass(frozen=True)
class PhoneEvent:
    """Start of one phoneme, as reported by the synthesiser.

    Attributes:
        sample: Start position in samples at the synthesiser's native rate.
        phone: eSpeak phoneme mnemonic (e.g. ``"aI"``, ``"dZ"``, ``"_:"`` for a pause).
    """

    sample: int
    phone: str


@dataclass(frozen=True)
class VoiceSettings:
    """One eSpeak voice with prosody settings.

    Attributes:
        voice: Voice name given to ``espeak_SetVoiceByName``, optionally with a variant,
            e.g. ``"en-us+m3"`` or ``"en+f2"``.
        rate: Speaking rate in words per minute (80-450).
        pitch: Base pitch, 0-100 (50 = the voice's default).
        pitch_range: Pitch range, 0-100 (0 = monotone).
        word_gap: Extra pause between words in units of 10 ms.
        volume: Amplitude, 0-200 (100 = normal).
    """

    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0
    volume: int = 100


@dataclass
class SynthOutput:
    """Result of synthesising one text.

    Attributes:
        audio: int16 samples, shape ``(T,)``, at ``sample_rate``.
        sample_rate: The synthesiser's native rate (22050 Hz for eSpeak NG).
        phones: Phoneme start events in time order (pauses included).
        word_starts: Sample index where each word starts, in order.
    """

    audio: np.ndarray
    sample_rate: int
    phones: list[PhoneEvent]
    word_starts: list[int]


def _find_library() -> str:
    explicit = os.environ.get(_LIBRARY_ENV)
    if explicit:
        return explicit
    found = ctypes.util.find_library("espeak-ng")
    return found or "libespeak-ng.so.1"


def espeak_available() -> bool:
    """Whether the eSpeak NG shared library can be loaded in this process."""
    try:
        ctypes.CDLL(_find_library())
    except OSError:
        return False
    return True


class EspeakSynthesizer:
    """Synthesise English text with eSpeak NG and collect phoneme timings.

    Args:
        library: Path or soname of the shared library; default: ``$SSLVITALS_ESPEAK_LIBRARY``,
            then ``ctypes.util.find_library("espeak-ng")``, then ``libespeak-ng.so.1``.
        data_path: Directory containing ``espeak-ng-data``; None for the built-in default.

    Raises:
        SSLVitalsError: if the library cannot be loaded or initialised.
    """

    def __init__(self, library: str | None = None, data_path: str | None = None) -> None:
        name = library or _find_library()
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as exc:
            raise SSLVitalsError(
                f"cannot load the eSpeak NG library {name!r} ({exc}); install it with "
                "'apt-get install espeak-ng libespeak-ng1' (or 'make install' as root), or point "
                f"{_LIBRARY_ENV} at libespeak-ng.so.1"
            ) from exc
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        path = data_path.encode() if data_path else None
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise SSLVitalsError(
                "espeak_Initialize failed: eSpeak NG found no voice data; reinstall 'espeak-ng-data' "
                "or pass data_path= the directory that holds espeak-ng-data"
            )
        self.sample_rate = int(rate)
        self._chunks: list[bytes] = []
        self._events: list[PhoneEvent] = []
        self._words: list[int] = []
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._voice: str | None = None

    def _on_synth(self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int,  # type: ignore[valid-type]
                  events: ctypes.POINTER(_Event)) -> int:  # type: ignore[valid-type]
        try:
            if wav and num_samples > 0:
                self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
            if events:
                i = 0
                while True:
                    ev = events[i]
                    if ev.type == _EVENT_LIST_TERMINATED:
                        break
                    if ev.type == _EVENT_PHONEME:
                        raw = bytes(ev.id.string).split(b"\0", 1)[0]
                        self._events.append(PhoneEvent(int(ev.sample), raw.decode("utf-8", "replace")))
                    elif ev.type == _EVENT_WORD:
                        self._words.append(int(ev.sample))
                    i += 1
        except Exception:  # never let an exception cross the C boundary
            logger.exception("error in the eSpeak NG callback")
            return 1
        return 0

    def _set(self, param: int, value: int, what: str) -> None:
        if self._lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
            raise SSLVitalsError(f"eSpeak NG rejected {what}={value}")

    def synthesize(self, text: str, settings: VoiceSettings = VoiceSettings()) -> SynthOutput:
        """Synthesise ``text`` with ``settings``.

        Args:
            text: Plain UTF-8 text (no SSML).
            settings: Voice and prosody.

        Returns:
            :class:`SynthOutput` with int16 audio ``(T,)`` at the native rate and the
            phoneme start events.

        Raises:
            SSLVitalsError: if the voice does not exist or synthesis fails.
        """
        with self._lock:
            if settings.voice != self._voice:
                if self._lib.espeak_SetVoiceByName(settings.voice.encode()) != _EE_OK:
                    self._voice = None
                    raise SSLVitalsError(
                        f"eSpeak NG has no voice {settings.voice!r}; list voices with "
                        "'espeak-ng --voices=en' and variants with 'espeak-ng --voices=variant'"
                    )
                self._voice = settings.voice
            self._set(_PARAM_RATE, settings.rate, "rate")
            self._set(_PARAM_PITCH, settings.pitch, "pitch")
            self._set(_PARAM_RANGE, settings.pitch_range, "pitch_range")
            self._set(_PARAM_WORDGAP, settings.word_gap, "word_gap")
            self._set(_PARAM_VOLUME, settings.volume, "volume")
            self._chunks, self._events, self._words = [], [], []
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            err = self._lib.espeak_Synth(
                ctypes.cast(buf, ctypes.c_void_p), len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                None, None,
            )
            if err != _EE_OK:
                raise SSLVitalsError(f"espeak_Synth failed with code {err} for text {text[:60]!r}")
            audio = np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()
            events = sorted(self._events, key=lambda e: e.sample)
            words = list(self._words)
        if not events:
            raise SSLVitalsError(
                "eSpeak NG produced no phoneme events; the library was initialised without "
                "phoneme events or is too old (need espeak-ng >= 1.49)"
            )
        return SynthOutput(audio=audio, sample_rate=self.sample_rate, phones=events, word_starts=words)


_CACHE: dict[int, EspeakSynthesizer] = {}


def get_synthesizer() -> EspeakSynthesizer:
    """The synthesiser of the current process (created on first use, one per process id)."""
    pid = os.getpid()
    synth = _CACHE.get(pid)
    if synth is None:
        synth = EspeakSynthesizer()
        _CACHE.clear()
        _CACHE[pid] = synth
    return synth

