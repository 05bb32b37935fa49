from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("registry", "0003_request_log_client_request_id")]

    operations = [
        migrations.AddField(
            model_name="requestlog",
            name="reply_capped",
            field=models.BooleanField(
                default=False,
                help_text="The spoken reply reached VOICEPROXY_MAX_SPOKEN_CHARS and was cut short.",
            ),
        ),
    ]
