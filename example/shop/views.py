from django.db.models import F
from django.shortcuts import get_object_or_404, redirect, render

from .forms import ScoreForm
from .models import Country, Hit, Score


def home(request):
    """Count this request, show the leaderboard, and add a score on POST."""
    Hit.objects.create(path=request.path)
    form = ScoreForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()  # the commit policy has stored it before this returns
        return redirect("home")
    return render(
        request,
        "shop/home.html",
        {"form": form, "hits": Hit.objects.count(), "scores": Score.objects.all()[:10]},
    )


def countries(request):
    """The lookup table; visiting a country counts a visit (spooled within a second)."""
    Hit.objects.create(path=request.path)
    return render(
        request,
        "shop/countries.html",
        {"countries": Country.objects.all(), "hits": Hit.objects.count()},
    )


def visit(request, code):
    if request.method == "POST":
        get_object_or_404(Country, code=code.upper())
        Country.objects.filter(code=code.upper()).update(visits=F("visits") + 1)
    return redirect("countries")
