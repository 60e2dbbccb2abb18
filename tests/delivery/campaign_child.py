"""Run a campaign in a child process (the kill test SIGKILLs it at random moments).

Usage: python -m tests.delivery.campaign_child CAMPAIGN.toml JOURNAL DNS_PORT SMTP_PORT
(from the repository root)
Prints one JSON line with the run summary when the run ends by itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from tests.helpers.worlds import Ports, run_options


async def main(toml: str, journal: str, dns_port: int, smtp_port: int) -> None:
    journal_path = Path(journal)
    options = run_options(journal_path.parent, Ports(dns_port, smtp_port), journal=journal_path)
    summary = await run_campaign(Campaign.load(toml, {}), options)
    print(
        json.dumps(
            {
                "complete": summary.complete,
                "recovered": summary.in_doubt_recovered,
                "counts": {str(k): v for k, v in summary.counts.items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
