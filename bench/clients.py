"""boto3 against obstore with a bucket and key pair per peer, as `make bench` runs it (the
full run only); `python -m bench.gather --clients` runs it alone. The case itself lives in
bench.gather, beside the raw GET and gather runners the shaped and large benchmarks share.
"""

from __future__ import annotations

import asyncio

from bench.gather import _weed, clients_case, clients_markdown

markdown = clients_markdown


def run(quick: bool = False) -> dict[str, object]:
    return asyncio.run(clients_case(_weed(), quick))
