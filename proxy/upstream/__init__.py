"""Everything said to Twitch: the OAuth client, the Helix client, how their failures map to the
proxy's errors, and what Twitch's rate-limit headers say."""
