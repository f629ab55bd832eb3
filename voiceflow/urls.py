from django.contrib import admin
from django.urls import include, path

from chat.urls import api_urlpatterns, page_urlpatterns
from chat.views import admin_login_view

from . import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    # Before the admin's own: the same view, answering 429 over the login limits.
    path("admin/login/", admin_login_view),
    path("admin/", admin.site.urls),
    path("api/", include(api_urlpatterns)),
    *page_urlpatterns,
]
