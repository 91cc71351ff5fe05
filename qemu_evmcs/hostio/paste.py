"""Undo what forums and chat do to a pasted vmxcap or rdmsr dump, keeping line numbers.

Why: the dumps users have are copied from issue trackers, mailing lists and forums, where they gain a shell
prompt line (``$ sudo ./vmxcap``), Markdown fences, ``> `` e-mail/Markdown quoting, non-breaking spaces and
tabs, and lose their leading indentation. None of that changes a value, so it is removed before parsing.
Removed lines become empty lines, so an error still names the line of the original paste.
"""

from __future__ import annotations

from qemu_evmcs.core.regexcache import regex

#: Non-breaking and other fixed-width spaces that HTML pages turn plain spaces into.
_ODD_SPACES: dict[int, str | None] = {**dict.fromkeys(map(ord, "\u00a0\u2007\u202f\u2009\u200a\u3000"), " "),
                                       # a BOM (Windows editors) and zero-width characters (HTML pages): nothing
                                       **dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060"), None)}
_FENCE = regex(r"^\s*(```|~~~)")
_QUOTE = regex(r"^\s*(?:>\s?)+")
#: A shell prompt running the dump tool: ``$ sudo ./vmxcap``, ``root@host:~# python3 vmxcap``,
#: ``[user@h ~]$ sudo rdmsr -a 0x480``, ``PS C:\\> ...``. Only such lines are dropped: a ``# name: x`` metadata
#: comment or a Windbg ``kd> rdmsr`` line is not a prompt followed by one of these tools.
_PROMPT = regex(r"^\s*(?:\[[^\]\n]*\]|\S*)[$#%>]\s*(?:sudo\s+)?(?:\S*/)?(?:python3?\s+\S*/?)?"
                r"(?:vmxcap|rdmsr|vmxcap\.py|cat|modprobe)\b")


#: A ``user@host`` prompt with any command or none (``[root@h ~]#`` after the output, ``u@h:~$ exit``): the
#: ``@`` before the prompt character is what no dump line has.
_USER_PROMPT = regex(r"^\s*(?:\[[^\]\n]*@[^\]\n]*\]|[\w.-]+@[\w.-]+(?::[^\s$#%]*)?)\s*[$#%](?:\s|$)")


def _is_prompt(line: str) -> bool:
    if line.lstrip().startswith("# "):
        return False
    return bool(_PROMPT.match(line)) or bool(_USER_PROMPT.match(line))


def clean_paste(text: str) -> str:
    """``text`` with prompts, fences and quoting removed and odd spaces and tabs made plain spaces.

    Leading indentation is left as it is (only the quoting before it is removed): the vmxcap parser decides
    what an unindented line is, since it knows the section titles.
    """
    out = []
    for raw in text.splitlines():
        line = raw.translate(_ODD_SPACES).replace("\t", "  ").rstrip()
        if line.lstrip().startswith(">"):
            # Markdown / e-mail quoting: "> " before the line ("  label" -> ">   label" -> "  label"). First:
            # a reply quotes a fenced paste fences and all ("> ```").
            line = _QUOTE.sub("", line, count=1)
        if _FENCE.match(line):
            out.append("")
            continue
        if _is_prompt(line):
            out.append("")
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


__all__ = ["clean_paste"]
