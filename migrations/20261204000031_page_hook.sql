-- Where pages are forwarded: a webhook URL or a command, at most one of
-- them (`skein page hook`). While one is set, each new and each resolved
-- page starts a Pages::Forward strand that delivers it (models/src/page.rs).
CREATE TABLE page_hook (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    url        text        CHECK (url ~ '^http://[^/?#[:space:]]+'),
    command    text        CHECK (command <> ''),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((url IS NULL) <> (command IS NULL))
);
