"""`/` counts its visits in the database and says which build answered."""

import os

from django.db import transaction
from django.db.models import F
from django.http import JsonResponse

from visits.models import Counter


def index(request):
    with transaction.atomic():
        counter, _ = Counter.objects.get_or_create(name="home")
        Counter.objects.filter(pk=counter.pk).update(hits=F("hits") + 1)  # atomic across workers
        counter.refresh_from_db()
    return JsonResponse(
        {
            "message": "Hello from Django on Tako",
            "visits": counter.hits,
            "version": os.environ.get("TAKO_BUILD", "dev"),
        }
    )
