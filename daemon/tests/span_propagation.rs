//! The traces rely on ractor carrying the sender's tracing span inside each message and
//! running the receiving handler in it (ractor's default `message_span_propogation`
//! feature): that is how an actor's own spans and events join the iteration's trace.
//! This guards the feature against being switched off by a dependency change.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

struct Echo;

/// Replies with the name of the span current in the handler.
struct WhichSpan(RpcReplyPort<Option<&'static str>>);

impl Actor for Echo {
    type Msg = WhichSpan;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WhichSpan>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<WhichSpan>,
        msg: WhichSpan,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = msg
            .0
            .send(tracing::Span::current().metadata().map(|m| m.name()));
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_senders_span_is_current_in_the_receiving_handler() {
    // A registry enables every span; set on this thread, where the actor also runs.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let (actor, handle) = Actor::spawn(None, Echo, ()).await.unwrap();
    let inside = async { actor.call(WhichSpan, None).await.unwrap() }
        .instrument(tracing::info_span!("profile"))
        .await;
    assert_eq!(inside.unwrap(), Some("profile"));
    // Sent outside any span, the handler runs in the actor's own span instead.
    let outside = actor.call(WhichSpan, None).await.unwrap();
    assert_ne!(outside.unwrap(), Some("profile"));
    actor.stop(None);
    handle.await.unwrap();
}
