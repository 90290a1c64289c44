from django.conf import settings


def site(request):
    """The seed's landing-page variables, for every template."""
    return {
        "site": {
            "title": settings.TITLE,
            "description": settings.DESCRIPTION,
            "version": settings.VERSION,
            "contact_name": settings.CONTACT_NAME,
            "contact_url": settings.CONTACT_URL,
            "contact_email": settings.CONTACT_EMAIL,
        }
    }
