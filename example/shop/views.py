from django.shortcuts import redirect, render

from .forms import ScoreForm
from .models import Hit, Score


def home(request):
    """Count this request, show the leaderboard, and add a score on POST."""
    Hit.objects.create(path=request.path)
    form = ScoreForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("home")
    return render(
        request,
        "shop/home.html",
        {"form": form, "hits": Hit.objects.count(), "scores": Score.objects.all()[:10]},
    )
