// `rate` is a count per second, minute or hour.
use amqp_core::rabbit_listener;

#[rabbit_listener(queue = "emails", rate = "200/day")]
async fn on_email(email: String) {
    let _ = email;
}

#[rabbit_listener(queue = "sms", rate = 200)]
async fn on_sms(sms: String) {
    let _ = sms;
}

fn main() {}
