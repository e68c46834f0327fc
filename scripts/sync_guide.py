"""Keep GUIDE.md's code blocks equal to the source they quote.

In the source, a region is marked with ``# [START name]`` and ``# [END name]``.
In GUIDE.md, a block is written as::

    <!-- snippet: dags/kubetorch_example/model.py#model -->
    ```python
    ...whatever is here gets replaced...
    ```

    python scripts/sync_guide.py           # rewrite GUIDE.md from the source
    python scripts/sync_guide.py --check   # exit 1 and name the stale blocks (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"<!-- snippet: (?P<path>[^#\s]+)#(?P<region>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```",
                     re.DOTALL)


def region(path: str, name: str) -> str:
    """The lines between ``# [START name]`` and ``# [END name]`` in ``path``, dedented."""
    lines = (REPO / path).read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"# [START {name}]")
        end = next(i for i, line in enumerate(lines) if line.strip() == f"# [END {name}]" and i > start)
    except StopIteration:
        raise SystemExit(f"{path}: no region '{name}' (# [START {name}] ... # [END {name}])") from None
    return textwrap.dedent("\n".join(lines[start + 1 : end])).strip("\n") + "\n"


def render(text: str) -> tuple[str, list[str]]:
    """The guide with every snippet refreshed, and the names of the snippets that changed."""
    stale = []

    def refresh(match: re.Match) -> str:
        body = region(match["path"], match["region"])
        if body != match["body"]:
            stale.append(f"{match['path']}#{match['region']}")
        return f"<!-- snippet: {match['path']}#{match['region']} -->\n```{match['lang']}\n{body}```"

    return SNIPPET.sub(refresh, text), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    parser.add_argument("--guide", default=str(REPO / "GUIDE.md"), help="the guide to sync (default: GUIDE.md)")
    args = parser.parse_args(argv)
    guide = Path(args.guide)
    new, stale = render(guide.read_text())
    if args.check:
        for name in stale:
            print(f"stale in {guide.name}: {name}", file=sys.stderr)
        if stale:
            print("run: python scripts/sync_guide.py", file=sys.stderr)
        return 1 if stale else 0
    guide.write_text(new)
    print(f"{guide.name}: {len(stale)} block(s) updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
