import os

from django.db import connection
from django.http import JsonResponse


def index(request):
    # Each worker opens its own connection on its first request (Django does it lazily).
    with connection.cursor() as cursor:
        cursor.execute("SELECT sqlite_version()")
        (version,) = cursor.fetchone()
    return JsonResponse({"pid": os.getpid(), "sqlite": version})
