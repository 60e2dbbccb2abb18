"""Egress: which local address a site's connections leave from, and the limits that follow.

- :mod:`~bulksend.egress.selection`: a site's lanes (one per source address, or one for the
  whole pool when its limits hold in total) and the weighted choice of a connection's source.

Everything here is plain state with no I/O; the delivery layer binds the chosen address.
"""
