"""What comes back: bounces (DSN), complaints (ARF), auto-replies, unsubscribes.

- :mod:`~bulksend.inbound.parse`: pure parsing of one message into notices.
- :mod:`~bulksend.inbound.ingest`: reading a maildir, mbox or folder of ``.eml`` files and
  applying the notices to the suppression store (``bulksend inbound ingest``).
- :mod:`~bulksend.inbound.receiver`: the SMTP receiver (``bulksend inbound --listen``).
- :mod:`~bulksend.inbound.unsubscribe`: the RFC 8058 one-click endpoint
  (``bulksend unsubscribe-server``).
- :mod:`~bulksend.inbound.listening`: the bounded TCP listener both run on.

See docs/suppression.md.
"""
