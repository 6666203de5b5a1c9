"""tts: text -> phonemes -> token LMs (AR + NAR) -> codec decoder -> waveform.

```python
import tts

synth = tts.load()  # weights/lm-ar, weights/lm-nar and their codec; tts.load(ar="tiny", nar="tiny") for tests
audio, sr = synth.synthesize("Hello there.", voice="kathleen", seed=0)
audio, sr = synth.synthesize("Hello.", prompt="me.wav", prompt_text="What I say in me.wav.")
pairs = synth.synthesize_batch(["One sentence.", "Another one."], voice="ljspeech")
for piece in synth.stream("A long text. With sentences."): ...
```

Modules: :mod:`tts.synthesizer` (the pipeline), :mod:`tts.sentences` (text -> chunks + pauses),
:mod:`tts.voices` (built-in voice prompts), :mod:`tts.asr` (pocketsphinx), :mod:`tts.speak`,
:mod:`tts.evaluate` (``tokenwave speak`` / ``eval-tts``).
"""

from tts.errors import TTSError
from tts.synthesizer import Synthesis, SynthesisConfig, Synthesizer, load, tiny_synthesizer
from tts.voices import list_voices

__all__ = ["Synthesis", "SynthesisConfig", "Synthesizer", "TTSError", "list_voices", "load", "tiny_synthesizer"]
