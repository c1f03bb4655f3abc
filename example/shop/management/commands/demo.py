"""``manage.py demo``: set the example up on SQLite files and run it.

Migrates, creates a demo staff user (local demo only: the password is printed), adds
sample data to empty tables, prints where to look, then runs the development server.
"""

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from shop.models import Country, Score

DEMO_USER, DEMO_PASSWORD = "demo", "demo-memdb"

COUNTRIES = [
    ("AR", "Argentina"),
    ("AU", "Australia"),
    ("BR", "Brazil"),
    ("CA", "Canada"),
    ("DE", "Germany"),
    ("ES", "Spain"),
    ("FR", "France"),
    ("IN", "India"),
    ("IT", "Italy"),
    ("JP", "Japan"),
    ("KE", "Kenya"),
    ("MX", "Mexico"),
    ("NG", "Nigeria"),
    ("NL", "Netherlands"),
    ("NZ", "New Zealand"),
    ("PL", "Poland"),
    ("SE", "Sweden"),
    ("US", "United States"),
    ("VN", "Vietnam"),
    ("ZA", "South Africa"),
]
SCORES = [("ada", 42), ("grace", 37), ("linus", 25), ("guido", 19)]


class Command(BaseCommand):
    help = "Set up the example (migrations, demo user, sample data) and run the server."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--no-server", action="store_true", help="Set up only.")

    def handle(self, *args, addrport, no_server, **options):
        call_command("migrate", verbosity=0)
        user, created = get_user_model().objects.get_or_create(
            username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        # The memory tables were restored from PersistentStorage on first use: only
        # empty ones (the very first run) get sample data.
        if not Country.objects.exists():
            Country.objects.bulk_create(Country(code=c, name=n) for c, n in COUNTRIES)
        if not Score.objects.exists():
            Score.objects.bulk_create(Score(player=p, points=s) for p, s in SCORES)
        base = f"http://{addrport}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "django-memdb example",
                    f"  site:          {base}/",
                    f"  countries:     {base}/countries/",
                    f"  admin:         {base}/admin/  (user {DEMO_USER!r}, password "
                    f"{DEMO_PASSWORD!r}: a local demo account)",
                    f"  memory tables: {base}/admin/memdb/memorytable/",
                    f"  REST API:      {base}/memdb/tables  (staff: log in to the admin first)",
                    f"  API docs:      {base}/api/docs/  and  {base}/api/redoc/",
                    "Stop with Ctrl-C and start again: scores and countries are restored, "
                    "the page-view counter starts over.",
                    "",
                ]
            )
        )
        if not no_server:
            call_command("runserver", addrport, use_reloader=False)
