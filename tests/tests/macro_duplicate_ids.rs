//! Two `#[rabbit_listener]`s with the same `id`: the app refuses to start, naming both
//! locations. (In a file of its own: duplicate detection looks at every listener in the binary.)

use amqp_core::{App, rabbit_listener};
use tests::{TestBroker, conformance};

const FIRST_LINE: u32 = line!() + 1;
#[rabbit_listener(queue = "macro.e2e.dup.a", id = "macro.e2e.dup")]
async fn first(n: u32) {
    let _ = n;
}

const SECOND_LINE: u32 = line!() + 1;
#[rabbit_listener(queue = "macro.e2e.dup.b", id = "macro.e2e.dup")]
async fn second(n: u32) {
    let _ = n;
}

async fn duplicate_ids_stop_the_app(b: TestBroker) {
    // Selecting one of them does not help: the ids of a program must be unique.
    let error = App::new()
        .url(b.url())
        .listeners(["macro.e2e.dup"])
        .start()
        .await
        .expect_err("two listeners with one id");
    let text = error.to_string();
    assert!(text.contains("'macro.e2e.dup'"), "{text}");
    for line in [FIRST_LINE, SECOND_LINE] {
        let location = format!("{}:{line}", file!());
        assert!(text.contains(&location), "{text} names {location}");
    }
    b.shutdown().await;
}

conformance!(duplicate_ids_stop_the_app);
