"""Views for the development server that ``test_restart`` starts: each request writes
one row and answers with the table's row count."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.testapp.models import CommitScore, Hit


def hit(request: HttpRequest) -> JsonResponse:
    """A memory-only table: 0.0.6 lost it when the first request's connection closed."""
    Hit.objects.create(path=request.path)
    return JsonResponse({"count": Hit.objects.count()})


def score(request: HttpRequest) -> JsonResponse:
    """A ``commit``-policy table: spooled before the response, so it survives a restart."""
    CommitScore.objects.create(player="web", points=CommitScore.objects.count() + 1)
    return JsonResponse({"count": CommitScore.objects.count()})


urlpatterns = [
    path("hit/", hit),
    path("score/", score),
]
