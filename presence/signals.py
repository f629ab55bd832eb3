"""Hooks other apps connect to; presence sends them and knows nothing of receivers."""

from django.dispatch import Signal

# A user went offline (last socket gone and the grace period over), decided by the
# grace timer of the process that held the socket or by the sweep. Sent with `asend`;
# kwargs: user_id, since (epoch seconds when their last socket went).
user_went_offline = Signal()
