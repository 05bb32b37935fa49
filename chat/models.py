"""Spoken replies, so a later turn can refer to one by its audio id (when Redis is not configured)."""

from __future__ import annotations

from django.db import models


class AudioReply(models.Model):
    audio_id = models.CharField(max_length=64, unique=True)
    transcript = models.TextField()
    # Whose reply it is (registry.access.owner_of): another key's turn cannot quote it.
    owner = models.CharField(max_length=64, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "spoken reply"

    def __str__(self) -> str:
        return self.audio_id
