"""Whisper's tokenizer, read from the model's own tokenizer.json (Hugging Face `tokenizers`).

Special tokens sit after the text vocabulary in a fixed order: <|endoftext|>, <|startoftranscript|>,
one token per language, <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>,
<|notimestamps|>, then 1501 timestamp tokens <|0.00|> ... <|30.00|> (not listed in tokenizer.json).
"""

from __future__ import annotations

import bisect
import json
import string
from functools import cache, cached_property, lru_cache
from pathlib import Path

from .errors import MaxWhisperError

LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

# Other names users type for a language.
LANGUAGE_ALIASES = {
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}
TO_LANGUAGE_CODE = {name: code for code, name in LANGUAGES.items()} | LANGUAGE_ALIASES

# Languages written without spaces between words: split word timings on unicode boundaries.
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}
TIMESTAMP_STEP = 0.02  # seconds per timestamp token
N_TIMESTAMPS = 1501


class TokenizerError(MaxWhisperError, ValueError):
    pass


def normalize_language(language: str | None) -> str | None:
    """Return the language code for a code or name ("English" -> "en"); raise on unknown."""
    if language is None:
        return None
    lang = language.lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    raise TokenizerError(
        f"unsupported language '{language}' (use a code such as en, de, fr, or a name)"
    )


class Tokenizer:
    """Text <-> token ids plus the special-token ids that decoding needs."""

    def __init__(
        self,
        tokenizer_json: str | Path,
        multilingual: bool,
        num_languages: int = 99,
        language: str | None = None,
        task: str | None = None,
    ):
        self.path = Path(tokenizer_json)
        self._hf = _load_bpe(self.path)
        self.multilingual = multilingual
        self.num_languages = num_languages
        if multilingual:
            self.language = normalize_language(language) or "en"
            self.task = task or "transcribe"
        else:
            self.language, self.task = None, None
        if self.task not in (None, "transcribe", "translate"):
            raise TokenizerError(f"unknown task '{task}' (transcribe or translate)")

        vocab = self._hf.get_vocab(with_added_tokens=True)
        self.special_tokens = {
            tok: i for tok, i in vocab.items() if tok.startswith("<|") and tok.endswith("|>")
        }
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.translate = self._special("<|translate|>")
        self.transcribe = self._special("<|transcribe|>")
        self.sot_lm = self._special("<|startoflm|>")
        self.sot_prev = self._special("<|startofprev|>")
        # Older English-only vocabularies call the no-speech token <|nocaptions|>.
        self.no_speech = self.special_tokens.get("<|nospeech|>") or self._special("<|nocaptions|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1

        sot_sequence = [self.sot]
        if self.language is not None:
            sot_sequence.append(self.to_language_token(self.language))
        if self.task is not None:
            sot_sequence.append(self.transcribe if self.task == "transcribe" else self.translate)
        self.sot_sequence = tuple(sot_sequence)

    def _special(self, token: str) -> int:
        try:
            return self.special_tokens[token]
        except KeyError:
            raise TokenizerError(
                f"{self.path} has no special token {token}: not a Whisper tokenizer"
            ) from None

    def with_options(self, language: str | None = None, task: str | None = None) -> Tokenizer:
        return get_tokenizer(self.path, self.multilingual, self.num_languages, language, task)

    # -- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids) -> str:
        """Text of the tokens, timestamp tokens left out."""
        ids = [int(t) for t in token_ids if t < self.timestamp_begin]
        return self._hf.decode(ids, skip_special_tokens=False)

    def decode_with_timestamps(self, token_ids) -> str:
        """Text with timestamp tokens written as <|1.08|>."""
        parts, run = [], []
        for t in token_ids:
            t = int(t)
            if t >= self.timestamp_begin:
                if run:
                    parts.append(self._hf.decode(run, skip_special_tokens=False))
                    run = []
                parts.append(f"<|{(t - self.timestamp_begin) * TIMESTAMP_STEP:.2f}|>")
            else:
                run.append(t)
        if run:
            parts.append(self._hf.decode(run, skip_special_tokens=False))
        return "".join(parts)

    # -- special-token sets --------------------------------------------------------------------
    def to_language_token(self, language: str) -> int:
        token = self.special_tokens.get(f"<|{language}|>")
        if token is None:
            raise TokenizerError(f"language '{language}' is not in this model's vocabulary")
        return token

    @cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        codes = list(LANGUAGES)[: self.num_languages]
        return tuple(
            self.special_tokens[f"<|{c}|>"] for c in codes if f"<|{c}|>" in self.special_tokens
        )

    @cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(self.decode([t]).strip("<|>") for t in self.all_language_tokens)

    @cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of speaker tags and non-speech annotations ("[MUSIC]", "♪♪", "( LAUGHS )") to
        suppress; hyphens and apostrophes stay allowed between words, as in Whisper."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # Multi-token musical symbols share their first UTF-8 bytes: suppressing the first token
        # is safe.
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # -- words ---------------------------------------------------------------------------------
    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        if self.language in NO_SPACE_LANGUAGES:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: list[int]):
        decoded_full = self.decode_with_timestamps(tokens)
        replacement_char = "\ufffd"
        words, word_tokens, current = [], [], []
        unicode_offset = 0
        for token in tokens:
            current.append(token)
            decoded = self.decode_with_timestamps(current)
            if (
                replacement_char not in decoded
                or decoded_full[unicode_offset + decoded.index(replacement_char)]
                == replacement_char
            ):
                words.append(decoded)
                word_tokens.append(current)
                current = []
                unicode_offset += len(decoded)
        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: list[int]):
        subwords, subword_tokens_list = self.split_tokens_on_unicode(tokens)
        words, word_tokens = [], []
        for subword, subword_tokens in zip(subwords, subword_tokens_list):
            special = subword_tokens[0] >= self.eot
            with_space = subword.startswith(" ")
            punctuation = subword.strip() in string.punctuation
            if special or with_space or punctuation or not words:
                words.append(subword)
                word_tokens.append(subword_tokens)
            else:
                words[-1] += subword
                word_tokens[-1].extend(subword_tokens)
        return words, word_tokens


@lru_cache(maxsize=8)  # one per file: every language/task variant of a Tokenizer shares it
def _load_bpe(path: Path):
    """The HF tokenizer, with any BPE merge that the file lost put back.

    Some converted tokenizer.json files drop merges (the multilingual base package lacks "Ġ t", so
    " the" and " to" split into two tokens). In Whisper's BPE a merge's priority is the rank (id)
    of the token it makes, so every text token above the 256 byte tokens must come from some merge;
    for one that no merge makes, add the merge of its two parts at the place its rank gives it.
    """
    from tokenizers import Tokenizer as HFTokenizer

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
    except (OSError, ValueError, KeyError) as exc:
        raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from None
    produced = {a + b for a, b in merges}
    missing = [
        tok for tok, rank in vocab.items() if rank >= 256 and len(tok) > 1 and tok not in produced
    ]
    if missing:
        ranks = [vocab.get(a + b, len(vocab)) for a, b in merges]
        for tok in sorted(missing, key=vocab.get):
            splits = [
                (tok[:i], tok[i:])
                for i in range(1, len(tok))
                if tok[:i] in vocab
                and tok[i:] in vocab
                and max(vocab[tok[:i]], vocab[tok[i:]]) < vocab[tok]
            ]
            if not splits:
                continue
            pair = min(splits, key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
            at = bisect.bisect_right(ranks, vocab[tok])
            merges.insert(at, list(pair))
            ranks.insert(at, vocab[tok])
        model["merges"] = merges
    return HFTokenizer.from_str(json.dumps(spec))


@cache
def get_tokenizer(
    tokenizer_json: str | Path,
    multilingual: bool,
    num_languages: int = 99,
    language: str | None = None,
    task: str | None = None,
) -> Tokenizer:
    return Tokenizer(tokenizer_json, multilingual, num_languages, language, task)
