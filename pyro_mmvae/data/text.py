r"""Character-level text as one-hot sequences over the MoPoE 71-symbol alphabet.

The alphabet is the one in MoPoE's ``alphabet.json`` (Sutter et al. 2021; the same list ships
with its successors), joined into one string in file order: the 26 lower-case letters, the 10
digits, 33 punctuation symbols, then a space and a newline. ``"-"`` appears twice (positions
36 and 59); like MoPoE's ``str.find`` lookup, :func:`encode_text` always uses the first, so
position 59 is never produced (a model can still put mass on it; :func:`decode_text` reads it
as ``"-"``).

MNIST-SVHN-Text writes the English word for the digit at a random start index in a string of
8 spaces (:func:`digit_text`); the encoded string is an ``(8, 71)`` one-hot matrix, each row a
valid ``OneHotCategorical`` sample.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

ALPHABET: str = ("abcdefghijklmnopqrstuvwxyz"
                 "0123456789"
                 "-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{}"
                 " \n")
"""The 71 symbols, in MoPoE ``alphabet.json`` order."""

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""The class words of MNIST-SVHN-Text, indexed by digit."""

# Character -> position; iterating in reverse lets the first occurrence win, as str.find does.
_INDEX = {c: i for i, c in reversed(list(enumerate(ALPHABET)))}


TEXT_LENGTH = 8
"""Length of the MNIST-SVHN-Text strings (MoPoE's ``len_sequence``)."""


def encode_text(strings: Union[str, Sequence[str]], length: int = TEXT_LENGTH,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encode strings as ``(N, length, 71)`` (a single ``str`` gives ``N = 1``).

    Upper-case letters are lower-cased (the alphabet has none). Strings shorter than ``length``
    are padded with spaces, so every position is one-hot; longer ones are truncated to
    ``length``, as MoPoE does.

    :raises ValueError: a character outside :data:`ALPHABET` (named, with its string).
    """
    if isinstance(strings, str):
        strings = [strings]
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    codes = torch.empty(len(strings), length, dtype=torch.long)
    for n, s in enumerate(strings):
        s = s.lower()[:length].ljust(length)
        for pos, ch in enumerate(s):
            try:
                codes[n, pos] = _INDEX[ch]
            except KeyError:
                raise ValueError(f"character {ch!r} in string {s.rstrip()!r} is not in the "
                                 f"71-symbol alphabet (pyro_mmvae.data.text.ALPHABET)") from None
    return torch.nn.functional.one_hot(codes, len(ALPHABET)).to(dtype)


def decode_text(onehot: torch.Tensor) -> Union[str, List[str]]:
    """Inverse of :func:`encode_text` by the argmax at each position.

    ``(L, 71)`` gives one string, ``(N, L, 71)`` a list of ``N`` strings (padding spaces kept;
    ``.strip()`` them for the word). Works on logits or probabilities too.
    """
    if onehot.dim() not in (2, 3) or onehot.shape[-1] != len(ALPHABET):
        raise ValueError(f"expected (L, {len(ALPHABET)}) or (N, L, {len(ALPHABET)}), "
                         f"got shape {tuple(onehot.shape)}")
    codes = onehot.argmax(-1)
    if codes.dim() == 1:
        return "".join(ALPHABET[i] for i in codes.tolist())
    return ["".join(ALPHABET[i] for i in row) for row in codes.tolist()]


def digit_text(labels: Union[torch.Tensor, Sequence[int]], length: int = 8,
               generator: Optional[torch.Generator] = None) -> List[str]:
    """MoPoE's MNIST-SVHN-Text strings: the word for each digit at a random start index.

    The start index is uniform on ``0 .. length - 1 - len(word)`` inclusive (MoPoE's
    ``random.randint(0, len_seq - 1 - len(text))``), so at least one trailing space remains.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    out = []
    for label in labels.tolist():
        if not 0 <= label <= 9:
            raise ValueError(f"digit label {label} is outside 0..9")
        word = DIGIT_WORDS[label]
        slack = length - 1 - len(word)
        if slack < 0:
            raise ValueError(f"length {length} is too short for the word {word!r} "
                             f"(needs at least {len(word) + 1})")
        start = int(torch.randint(slack + 1, (), generator=generator))
        out.append(" " * start + word + " " * (length - start - len(word)))
    return out
