"""Recognisable fake API keys for the tests, assembled at run time.

The tests need keys in the providers' real shapes (to prove that redaction and the secret scans catch them), but no
literal in the repository should look like a real key to a secret scanner: each fake key is a provider prefix plus
a tag that says what it is.
"""

OPENROUTER = "sk-" + "or-v1-"
GROQ = "gsk" + "_"
OPENAI_STYLE = "sk" + "-"


def openrouter_key(tag: str) -> str:
    return OPENROUTER + tag


def groq_key(tag: str) -> str:
    return GROQ + tag
