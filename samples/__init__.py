"""The sample referral requests: one per path of the referrer flow, and one invalid message.

Shipped as package data so that ``ers-worker demo`` works from a plain ``pip install``.
"""

from pathlib import Path

DIR = Path(__file__).resolve().parent
