from django.db import models


class Counter(models.Model):
    """A named counter in the database: the page's visits survive restarts, deploys and rollbacks."""

    name = models.CharField(max_length=50, unique=True)
    hits = models.PositiveIntegerField(default=0)
