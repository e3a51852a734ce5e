"""Discord: the notifier, the bot and deep links, against a local fake of Discord's REST API."""
