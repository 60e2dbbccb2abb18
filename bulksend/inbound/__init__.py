"""What comes back to the return path: bounces (DSN), complaints (ARF), auto-replies.

- :mod:`~bulksend.inbound.parse`: pure parsing of one message into notices.
- :mod:`~bulksend.inbound.ingest`: reading a maildir, mbox or folder of ``.eml`` files and
  applying the notices to the suppression store (``bulksend inbound ingest``).

See docs/suppression.md.
"""
