"""A one-file Django project for the logging test: settings, one view, and both of its
apps (``application``: WSGI, ``asgi_application``: ASGI). DEBUG is on, so Django's own
console handler prints the ``Not Found`` warning of a 404 — once, unless a root
``basicConfig`` behind the app's back prints it a second time."""
import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(DEBUG=True, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="a-test-only-key",
                   MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True)
django.setup()


def index(request):
    return HttpResponse(b"django ok")


urlpatterns = [path("", index)]

from django.core.asgi import get_asgi_application  # noqa: E402  (after setup)
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
asgi_application = get_asgi_application()
