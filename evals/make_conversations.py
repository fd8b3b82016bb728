"""Build ``evals/corpora/conversations.jsonl``: support conversations labelled turn by turn *in context*.

The benchmark for conversation-aware routing: a follow-up such as "ok do it" after "I want to
cancel my order" belongs to ORDER although its words alone name no category. Each conversation
opens with a Bitext instruction (from the replay pool, ``bucket >= 80``, that the demo's
classifier never trains on; first turns spread over all 11 categories, never repeated), then one
to three follow-ups of these kinds:

* ``confirm``, ``clarify``, ``anaphoric``: hand-written turns that only make sense in context
  ("yes please, go ahead", "what do you mean exactly?", "what if it already shipped?"). They carry
  the category, intent and Bitext answer of the conversation's current topic (the last Bitext
  turn, whose index is ``continues``): they are written as confirmations, requests to explain
  again and "how do I do that"-style questions about the same task, so the continued intent's
  Bitext answer is a right answer. Confirmations follow only intents that ask for an action
  (cancel, change, create, ...), never an information request such as a delivery period. Some
  anaphoric turns are deliberately hard: their words alone suggest another category
  (SHIPPING_ADDRESS "what if it already shipped?" reads as DELIVERY). A turn that changes the
  subject ("and the refund for it?") is a switch, so none is written as anaphoric.
* ``same_category``, ``switch``: other Bitext instructions of the topic's category, or of another
  one (sometimes after "also, " and the like; some short ones). Self-contained: they keep their
  own Bitext category, intent and answer, and become the topic later turns continue.
* ``out_of_scope``: general requests outside customer support (a joke, a recipe, maths), labelled
  ``None`` with no reference: only the cloud can answer them. They leave the topic unchanged, but
  no context-dependent turn directly follows one (what "it" would refer to is unclear).

Every hand-written list is split into disjoint ``dev`` and ``test`` halves; a conversation's split
(a salted hash of its first text, about 40 % dev) picks the half its wording comes from, so a
routing method can be tuned on dev and reported on test with wording it never saw. The test half's
misses later shaped the rule's second version, so a third half, ``holdout``, was written after that
version was committed, by a writer told to write as customers type and not allowed to read the
rule: ``conversations_holdout.jsonl`` (``HOLDOUT_OUT``) draws its first turns from the same replay
pool (another seed) and takes all its hand-written turns from it. Once the holdout's misses had
been read (and any change they inspire would be tuned on them), a fourth half, ``holdout2``, was
written the same way by another writer who read neither the rule nor its results:
``conversations_holdout2.jsonl`` (``HOLDOUT2_OUT``). After holdout2's results had been read, a fifth
half, ``holdout3``, was written the same way by a writer who read neither the rule, the learned
detector nor any result: ``conversations_holdout3.jsonl`` (``HOLDOUT3_OUT``). The labels are for
scoring only: nothing here is read at routing time. Deterministic (fixed seeds); run
``python -m evals.make_conversations`` to write the four files again.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from evals.demo import bucket, load_bitext

OUT = Path(__file__).resolve().parent / "corpora" / "conversations.jsonl"
HOLDOUT_OUT = OUT.with_name("conversations_holdout.jsonl")
HOLDOUT = "holdout"  # the wording half (and split) no version of the follow-up rule was shaped on
HOLDOUT_SEED = 29
HOLDOUT2_OUT = OUT.with_name("conversations_holdout2.jsonl")
HOLDOUT2 = "holdout2"  # written after the holdout's misses had been read (2026-12-04), by a writer who never read the rule
HOLDOUT2_SEED = 41
HOLDOUT3_OUT = OUT.with_name("conversations_holdout3.jsonl")
HOLDOUT3 = "holdout3"  # written 2026-12-04 night by a writer who read neither the rule, the learned detector nor any result
HOLDOUT3_SEED = 53
SEED = 11  # the dev / test corpus's draws
# Every corpus file with the seed of its draws and the wording half its hand-written turns come from
# (None: dev or test, by each conversation's split): what main() writes and the tests rebuild.
CORPORA: tuple[tuple[Path, int, str | None], ...] = (
    (OUT, SEED, None), (HOLDOUT_OUT, HOLDOUT_SEED, HOLDOUT), (HOLDOUT2_OUT, HOLDOUT2_SEED, HOLDOUT2), (HOLDOUT3_OUT, HOLDOUT3_SEED, HOLDOUT3),
)

FIRST_PER_CATEGORY = 36  # capped by the replay pool (CANCELLATION_FEE has 33, NEWSLETTER 35)
DEV_SHARE = 40  # percent of conversations in the dev split
# Share of each follow-up kind, aiming at 50 % context-dependent (confirm / clarify / anaphoric),
# 15 % same category, 20 % switch, 15 % out of scope.
# The drawn weights lean towards context: no context-dependent turn may follow an out-of-scope one.
KIND_WEIGHTS = {"context": 0.55, "same_category": 0.14, "switch": 0.18, "out_of_scope": 0.13}
CONTEXT_WEIGHTS = {"confirm": 0.35, "clarify": 0.2, "anaphoric": 0.45}
CONTEXT_KINDS = ("confirm", "clarify", "anaphoric")

# Intents whose answer walks through an action the user can agree to ("ok do it").
ACTION_INTENTS = {
    "cancel_order", "change_order", "place_order", "create_account", "delete_account", "edit_account",
    "recover_password", "switch_account", "registration_problems", "change_shipping_address",
    "set_up_shipping_address", "get_refund", "get_invoice", "newsletter_subscription",
    "contact_customer_service", "contact_human_agent", "complaint", "review",
}  # fmt: skip

CONFIRM = {
    "dev": ["ok do it", "yes please, go ahead", "Sure, let's do that.", "yep", "great, please proceed",
            "alright go for it", "OK thanks, I'll do that now", "yes!"],
    "test": ["yes, do that please", "ok go ahead", "Sounds good, let's go with that", "perfect!! do it",
             "yeah sure", "right, please continue", "fine, proceed", "ok let's do it then"],
    "holdout": ["k", "yes pls", "yup that's it, go on", "Yes, that's exactly what I want.",
                "ok cool, can you just go ahead and sort that out for me then", "sure thing",
                "alrighty, lets get it done", "Confirmed."],
    "holdout2": ["ya ok", "yess that one", "Please do, thank you.", "mhm sounds right, start it",
                 "ok ive made up my mind, id like to go through with it", "yeah thats what i was after, carry on",
                 "Right, I'm happy with that, you can start.", "okey dokey"],
    "holdout3": ["👍", "yes yes please do it now thank you", "Yes, kindly proceed with the same.",
                 "oki i will try it like that", "That is correct, I would like to continue. Thank you very much for your help.",
                 "YES CONFIRMED", "fine by me 🙂 lets go",
                 "ok so im going ahead with it, ive thought about it the whole week and my mind is made up so yeah whatever the next step is lets just do it"],
}  # fmt: skip
CLARIFY = {
    "dev": ["sorry, can you explain that again?", "what do you mean exactly?", "I don't get it",
            "can you say that more simply?", "could you go over that once more?", "huh??",
            "wait, can you repeat the steps"],
    "test": ["sorry, I didn't follow that", "can you rephrase?", "what does that mean",
             "Could you explain it in simpler terms please", "I'm lost, say again?",
             "not sure I understand, can you repeat?", "come again?"],
    "holdout": ["wdym", "sorry, what?", "that's a lot of steps, can you break it down for me?",
                "im not great with computers, could you explain it slower", "Hmm, I read that twice and still don't get it.",
                "confused. say it a different way?", "in plain english please"],
    "holdout2": ["??", "sorry which part do I do first? kinda lost", "can u explain that like step 1 step 2",
                 "Sorry, that went over my head. Could you walk me through it again?",
                 "that doesnt really make sense to me tbh", "english isnt my first language, can you use easier words",
                 "so what am i actually supposed to do"],
    "holdout3": ["sorry i not understand, what i must to do?", "I beg your pardon, could you please clarify the procedure?",
                 "uh what", "can you say that again slower i am driving and using voice to text",
                 "too many steps 😵 simpler pls",
                 "ok so i read your message like three times and honestly im still not sure which bit applies to me, could you go through it again but more basic, im not very techy",
                 "wait wHat? explain pls"],
}  # fmt: skip
GENERIC_ANAPHORIC = {
    "dev": ["can I do that from my phone?", "and what happens after that?", "how long does that usually take?",
            "where do I find that exactly?", "do I need to be logged in for that?", "what if that doesn't work?",
            "is there an easier way?"],
    "test": ["does that work in the app too?", "ok and then what?", "how long does it normally take",
             "which menu is that under?", "do i have to sign in first?", "and if I get stuck halfway?",
             "is that the only way to do it?"],
    "holdout": ["how?", "and how soon does that happen", "where is that on the site? cant find it anywhere",
                "will i get an email or something when its done?", "so what's the next step",
                "what info do I need to have ready for that",
                "ok, and if it still doesn't work after I've done all that, what then?"],
    "holdout2": ["can i do it on the website or is it app only", "ok, where do i even start",
                 "does it take effect right away or is there a delay?", "is it the same steps on android",
                 "what if the button is greyed out for me",
                 "do I have to finish it all in one go, or can I come back to it later?",
                 "how will i know it actually worked"],
    "holdout3": ["and this works also from the mobile app or only from computer?",
                 "where exactly on the website do i see this, i looked in my profile and nothing",
                 "Is there anything I should have ready beforehand, e.g. my order number or ID?", "ok and after that? 🤔",
                 "is it the same for every country or only here in the UK", "what if i do it wrong can i start over",
                 "and that's still up to date? the help page says something different"],
}  # fmt: skip
# Per category: (text, the intents it fits; empty means every intent of the category).
ANAPHORIC: dict[str, dict[str, list[tuple[str, tuple[str, ...]]]]] = {
    "ACCOUNT": {
        "dev": [("it's for my work account", ()),
                ("what if I don't remember the email I used?", ("recover_password", "edit_account", "delete_account")),
                ("will I lose my order history?", ("delete_account", "switch_account"))],  # reads as ORDER
        "test": [("this is for my business profile, not my personal one", ()),
                 ("do I need to verify my email for that?", ("create_account", "edit_account", "recover_password", "registration_problems")),
                 ("and will my saved addresses still be there afterwards?", ("delete_account", "switch_account"))],  # reads as SHIPPING_ADDRESS
        "holdout": [("the reset link never shows up in my inbox", ("recover_password",)),
                    ("is that permanent? like could i get it back later", ("delete_account",)),
                    ("it keeps saying the username is already taken", ("create_account", "registration_problems")),
                    ("what happens to the gift card balance on it?", ("delete_account", "switch_account"))],  # reads as PAYMENT
        "holdout2": [("i made it with my google login if that matters", ("recover_password", "edit_account", "delete_account")),
                     ("the verification code text never comes thru", ("create_account", "registration_problems", "recover_password")),
                     ("will i still get the newsletter emails after that?", ("delete_account",)),  # reads as NEWSLETTER
                     ("does it change straight away or at the end of my billing month", ("switch_account",))],  # reads as INVOICE / PAYMENT
        "holdout3": [("tried 3 times already, the email with the link is not arriving, i checked spam also",
                      ("recover_password", "registration_problems", "create_account")),
                     ("can I undo it within 30 days if I change my mind", ("delete_account", "switch_account")),
                     ("its the account my premium subscription is paid from, will that be cancelled too?", ("delete_account",)),  # reads as CANCELLATION_FEE / PAYMENT
                     ("the name on it is spelled wrong, it says Jon but its John", ("edit_account",))],
    },
    "CANCELLATION_FEE": {
        "dev": [("is it the same if I cancel in the first month?", ()), ("and for the yearly plan?", ()),
                ("would that be charged to my card?", ())],  # reads as PAYMENT
        "test": [("what about if I'm on the premium plan?", ()), ("does that apply if I cancel early?", ()),
                 ("would it show up on my next bill?", ())],  # reads as INVOICE
        "holdout": [("even if it's only been a week?", ()), ("so roughly how much are we talking", ()),
                    ("is it a one-off or do I keep paying it every month?", ()),  # reads as PAYMENT
                    ("what if I'm moving abroad, do you waive it then?", ())],
        "holdout2": [("im on the family plan if that changes anything", ()), ("my contract ends in march, do i still have to pay it?", ()),
                     ("would it come off the refund I'm owed or get billed separately?", ()),  # reads as REFUND
                     ("does it go down the longer youve been a member", ())],
        "holdout3": [("i signed up on 1 nov and want out now, so like 5 weeks, how much would that be", ()),
                     ("Is the fee the same for students? I have a student discount on my plan.", ()),
                     ("so if i cancel only the 2nd phone line is there still a fee for that", ()),  # reads as ORDER
                     ("the guy in the shop told me there is no fee 😡 is that true or not", ())],  # reads as FEEDBACK
    },
    "CONTACT": {
        "dev": [("are they available on weekends?", ()), ("do they speak Spanish?", ()), ("is there usually a wait?", ())],
        "test": [("what hours are they open?", ()), ("can I just email them instead?", ()), ("is that number toll free?", ())],
        "holdout": [("is that a real person or another bot", ()), ("can they ring me back instead? I'm at work", ()),
                    ("what time of day is best to get through", ()),
                    ("and they can deal with order problems too?", ())],  # reads as ORDER
        "holdout2": [("do they do live chat or just phone", ()), ("if i email how long till someone replies", ()),
                     ("whats the number if im calling from outside the uk", ()),
                     ("can i talk to them about a billing thing?", ())],  # reads as INVOICE / PAYMENT
        "holdout3": [("is the line open on 24 december? i know its christmas eve", ()),
                     ("please a human, not the robot, my english is not so good for chatbot", ("contact_human_agent",)),
                     ("do they have whatsapp", ()),
                     ("can they help me with a parcel that never came or is that a different team", ())],  # reads as DELIVERY
    },
    "DELIVERY": {
        "dev": [("what if I'm not home?", ()), ("does that include weekends?", ()),
                ("and to a PO box?", ("delivery_options",))],  # reads as SHIPPING_ADDRESS
        "test": [("what if nobody's there to sign for it?", ()), ("is express any faster?", ()),
                 ("can it be left with a neighbour?", ())],
        "holdout": [("so i'd have it by friday?", ("delivery_period",)), ("the cheapest option i guess", ("delivery_options",)),
                    ("is that counted from when I pay or from when it leaves the warehouse?", ("delivery_period",)),  # reads as PAYMENT
                    ("what about rural areas, same?", ())],
        "holdout2": [("to ireland?", ()), ("i need it before the 22nd, its a gift", ("delivery_period",)),
                     ("can i pick it up from a locker or a store instead", ("delivery_options",)),  # reads as SHIPPING_ADDRESS
                     ("and if i order after 5pm does it still go out today?", ("delivery_period",))],  # reads as ORDER
        "holdout3": [("ordering today the 4th, postcode BT7, when would it arrive roughly", ("delivery_period",)),
                     ("Is there an option where the courier phones me 30 minutes before arriving?", ("delivery_options",)),  # reads as CONTACT
                     ("does the black friday rush make it slower", ("delivery_period",)),
                     ("to switzerland also? with customs and everything", ())],
    },
    "FEEDBACK": {
        "dev": [("it's about the delivery guy being rude", ("complaint",)),  # reads as DELIVERY
                ("can I add photos to it?", ()), ("will someone actually read it?", ())],
        "test": [("the support agent on the phone was really unhelpful", ("complaint",)),  # reads as CONTACT
                 ("can I post it anonymously?", ()), ("it's about the product I got last week", ())],
        "holdout": [("it's mostly positive tbh, just one small thing", ("review",)),
                    ("do I get a reference number or something?", ("complaint",)), ("is there a word limit", ()),
                    ("basically your app keeps logging me out every 5 minutes", ("complaint",))],  # reads as ACCOUNT
        "holdout2": [("5 stars honestly, the blender is great", ("review",)),
                     ("ive been charged twice and nobody answers my emails about it", ("complaint",)),  # reads as PAYMENT
                     ("does it go to the store manager or to head office?", ()), ("can i edit it after i post it", ("review",))],
        "holdout3": [("its about order 88213, the sofa came with a huge scratch and the legs missing", ("complaint",)),  # reads as ORDER / DELIVERY
                     ("i give 4 stars because box was bit damaged but the headphones works perfect", ("review",)),  # reads as DELIVERY
                     ("Will I receive a written response within a specific timeframe?", ("complaint",)),
                     ("can i write it in german", ())],
    },
    "INVOICE": {
        "dev": [("the one from last month", ()), ("i need it as a PDF", ()),
                ("it's for the payment I made in March", ())],  # reads as PAYMENT
        "test": [("the one from January please", ()), ("can it have my company's VAT number on it?", ()),
                 ("the one for my last order", ())],  # reads as ORDER
        "holdout": [("the february one", ()), ("can it go straight to my accountant's email?", ("get_invoice",)),
                    ("the total on it looks higher than what I was charged", ("check_invoice",)),  # reads as PAYMENT
                    ("and the 2023 ones too if possible", ())],
        "holdout2": [("inv 2024-0193", ()), ("the one for the 2 chairs i bought in november", ()),  # reads as ORDER
                     ("its on my old account, i changed emails since", ()),  # reads as ACCOUNT
                     ("can i get them all in one file for my taxes", ("get_invoice",))],
        "holdout3": [("the one dated 03/10/2024 for 149,90 €", ()),
                     ("theres a shipping charge of 6.99 on it but i had free shipping??", ("check_invoice",)),  # reads as DELIVERY / PAYMENT
                     ("my boss needs it on paper by post, is that possible", ("get_invoice",)),  # reads as SHIPPING_ADDRESS
                     ("the one from when I ordered the printer ink, cant remember the date", ())],
    },
    "NEWSLETTER": {
        "dev": [("where do I sign up for it?", ()), ("can I do it with my work email?", ()), ("so just my email address?", ())],
        "test": [("do I need an account for that?", ()), ("which page is that on", ()),
                 ("is it the box at the bottom of the homepage?", ())],
        "holdout": [("how often would i get it", ()), ("signed up but no confirmation email yet", ()),
                    ("can I choose to only get the sale stuff?", ())],
        "holdout2": [("is it free?", ()), ("it keeps ending up in my spam folder", ()),
                     ("can i do it for two email addresses", ())],
        "holdout3": [("do i get a discount code for signing up", ()), ("can u sign me up with maria.k@gmail.com", ()),
                     ("I only want it once a month, not every day, is that possible", ())],
    },
    "ORDER": {
        "dev": [("the one I placed yesterday", ("cancel_order", "change_order", "track_order")),
                ("how much does that cost?", ("change_order",)),  # reads as CANCELLATION_FEE / PAYMENT
                ("it has two items in it", ("cancel_order", "change_order", "track_order")),
                ("what if I want 3 of them?", ("place_order",))],
        "test": [("the order from last Tuesday", ("cancel_order", "change_order", "track_order")),
                 ("i ordered it on the app", ("cancel_order", "change_order", "track_order")),
                 ("and if it's already been paid?", ("cancel_order", "change_order")),  # reads as PAYMENT
                 ("can I get different sizes in one go?", ("place_order",))],
        "holdout": [("#40217, from the 3rd", ("cancel_order", "change_order", "track_order")),
                    ("it's says processing still", ("cancel_order", "change_order", "track_order")),
                    ("the blue one instead of the black", ("change_order",)),
                    ("and I can pay for it at the end right?", ("place_order",))],  # reads as PAYMENT
        "holdout2": [("order no. 71-3306, placed on the 9th", ("cancel_order", "change_order", "track_order")),
                     ("i checked out as a guest, no account", ("cancel_order", "change_order", "track_order")),  # reads as ACCOUNT
                     ("the status hasnt moved since monday", ("track_order",)),  # reads as DELIVERY
                     ("is there a minimum spend?", ("place_order",))],
        "holdout3": [("its the one with the coffee machine, ordered 28 nov, number ends in 4471", ("cancel_order", "change_order", "track_order")),
                     ("the courier app already says out for delivery", ("cancel_order", "change_order", "track_order")),  # reads as DELIVERY
                     ("size M to L please, the rest stays the same", ("change_order",)),
                     ("can I order as a company with a purchase order number", ("place_order",))],  # reads as INVOICE / PAYMENT
    },
    "PAYMENT": {
        "dev": [("ok, and how long will that take?", ("payment_issue",)),  # reads as DELIVERY
                ("it's a Visa debit card", ()), ("it keeps saying declined", ("payment_issue",))],
        "test": [("and how long until it goes through?", ("payment_issue",)),  # reads as DELIVERY
                 ("what about Apple Pay?", ("check_payment_methods",)),
                 ("it failed right on the checkout page", ("payment_issue",)),  # reads as ORDER
                 ("do you take amex", ("check_payment_methods",))],
        "holdout": [("and paypal?", ("check_payment_methods",)), ("tried two different cards, same thing", ("payment_issue",)),
                    ("but the money still left my account", ("payment_issue",)),  # reads as REFUND
                    ("can I split it over a few months", ("check_payment_methods",))],
        "holdout2": [("what about klarna or afterpay", ("check_payment_methods",)),
                     ("it says 'transaction could not be processed' and then nothing", ("payment_issue",)),
                     ("my bank says they didnt block anything on their end", ("payment_issue",)),
                     ("got charged twice for the same order", ("payment_issue",))],  # reads as ORDER / REFUND
        "holdout3": [("bank transfer also ok? i dont have credit card", ("check_payment_methods",)),
                     ("the error code is 05 do not honour", ("payment_issue",)),
                     ("the order page still shows 'awaiting payment' since yesterday", ("payment_issue",)),  # reads as ORDER
                     ("is google pay accepted in the app as well as on the website", ("check_payment_methods",))],
    },
    "REFUND": {
        "dev": [("it arrived broken", ("check_refund_policy", "get_refund")),  # reads as DELIVERY
                ("it's been two weeks already", ("track_refund",)),
                ("what if I already threw away the box?", ("check_refund_policy", "get_refund"))],
        "test": [("the item was damaged when it came", ("check_refund_policy", "get_refund")),  # reads as DELIVERY
                 ("i sent it back ten days ago", ("track_refund",)),  # reads as DELIVERY / ORDER
                 ("it was a gift, does that matter?", ("check_refund_policy", "get_refund"))],
        "holdout": [("only opened it, never used", ("check_refund_policy", "get_refund")),
                    ("bought it about 5 weeks ago, too late?", ("check_refund_policy", "get_refund")),
                    ("still nothing on my card statement", ("track_refund",)),  # reads as PAYMENT
                    ("will it go back to the original card or as store credit", ())],
        "holdout2": [("its from the sale, does that change anything?", ("check_refund_policy", "get_refund")),
                     ("the parcel never even turned up", ("check_refund_policy", "get_refund")),  # reads as DELIVERY
                     ("returned order 58812 on the 14th and theyve had it since", ("track_refund",)),  # reads as ORDER
                     ("how many working days till it hits my bank", ("track_refund",))],  # reads as PAYMENT
        "holdout3": [("the shoes are too small, never worn outside", ("check_refund_policy", "get_refund")),
                     ("the courier tracking shows you received the return on 27/11", ("track_refund",)),  # reads as DELIVERY
                     ("i paid with a gift card, how i get the money back then?", ("check_refund_policy", "get_refund")),  # reads as PAYMENT
                     ("Still waiting for the £42.50, it has been over three weeks now.", ("track_refund",))],
    },
    "SHIPPING_ADDRESS": {
        "dev": [("what if it already shipped?", ("change_shipping_address",)),  # reads as DELIVERY
                ("it's my office address", ()), ("can I have two saved?", ("set_up_shipping_address",))],
        "test": [("and if the package is already on its way?", ("change_shipping_address",)),  # reads as DELIVERY
                 ("it's an apartment, where does the unit number go?", ()), ("i want it to be my default", ())],
        "holdout": [("it's a new build so the street might not come up", ()),
                    ("only for this one order, not permanently", ("change_shipping_address",)),  # reads as ORDER
                    ("can it be in a different country?", ())],
        "holdout2": [("we moved house last week", ("change_shipping_address",)), ("the postcode field wont accept mine", ()),
                     ("do i have to redo it on every order?", ("set_up_shipping_address",))],  # reads as ORDER
        "holdout3": [("order number is 30057 and it has not shipped yet", ("change_shipping_address",)),  # reads as ORDER
                     ("it is a c/o address, my cousin receives the parcels for me", ()),
                     ("i need a second one for my holiday house in spain from july", ("set_up_shipping_address",))],
    },
}  # fmt: skip
OUT_OF_SCOPE_REQUESTS = {
    "dev": ["write me a short poem about autumn", "tell me a joke", "what's the weather like in Paris tomorrow?",
            "also, can you explain what a derivative is?", "unrelated, but how do I reverse a list in Python?",
            "who won the world cup in 2010", "give me a recipe for banana bread", "translate 'good morning' into German",
            "what is 17 times 23?", "recommend a good sci-fi novel", "also, can you summarise the plot of Hamlet?",
            "unrelated, but what's the capital of Australia?", "how many calories are in an avocado",
            "write a haiku about coffee", "what's a good name for a golden retriever?",
            "explain quantum entanglement like I'm five", "can you help me write a cover letter for a nurse job?",
            "What year did the Berlin Wall fall?", "also, can you suggest a 3 day itinerary for Rome?",
            "how do I fix a merge conflict in git", "unrelated, but is a tomato a fruit or a vegetable?",
            "give me 5 ideas for a kid's birthday party", "solve x^2 - 5x + 6 = 0", "who painted the Mona Lisa?"],
    "test": ["tell me something funny", "write a limerick about a cat", "will it rain in London this weekend?",
             "also, can you explain how photosynthesis works?", "unrelated, but what's a closure in JavaScript?",
             "who was the first person on the moon", "how do I make a simple tomato sauce?",
             "how do you say 'thank you' in Japanese", "what's 15% of 240?", "suggest a good podcast about history",
             "also, can you write a SQL query that counts rows per day?", "unrelated, but how far is the moon from earth?",
             "what's the tallest mountain in Africa", "compose a short song about the sea",
             "ideas for a team-building activity?", "explain the rules of cricket", "help me plan a workout for beginners",
             "what does 'carpe diem' mean?", "also, can you recommend a movie for tonight?",
             "write a regex that matches an email address", "unrelated, but how long should I boil an egg?",
             "give me a fun fact about octopuses", "what is the square root of 1764?", "who wrote Pride and Prejudice"],
    "holdout": ["know any good puns?", "which country has the most islands?", "how many ounces in a cup",
                "write a python function that checks if a number is prime", "easy dinner ideas with chicken and rice?",
                "I'm going to Lisbon in May, what should I see", "oh while I'm here, who invented the telephone?",
                "can you help me word a text to my landlord about the broken heater", "what's 3/8 as a percentage",
                "totally random q but do cats dream?", "write a birthday message for my grandma, she's turning 90",
                "how do i convert celsius to fahrenheit in my head", "why is the sky blue",
                "off topic - can u recommend a board game for 4 people", "best way to learn spanish fast?",
                "what rhymes with orange", "explain the difference between weather and climate",
                "also, what's the difference between a list and a tuple", "give me a vegan lasagna recipe",
                "integral of x times e^x?", "is it worth visiting iceland in winter", "how do I center a div",
                "summarize the french revolution in 3 sentences", "whats a good caption for a beach photo"],
    "holdout2": ["whats the longest river in south america", "btw can you write a bash one-liner to rename all .jpeg files to .jpg",
                 "how long do i roast a whole chicken for, its about 2kg", "tell me a riddle", "what's an 18% tip on $64.50",
                 "plan a weekend in edinburgh for me and my partner, we like food and hiking",
                 "also quick one, how many bones are in the human body?",
                 "can you help me write a resignation email, polite but short", "derivative of sin(x)^2",
                 "what time zone is tokyo in", "suggest a name for my sourdough starter lol",
                 "how do i undo the last commit in git without losing my changes", "Is it safe to eat raw cookie dough?",
                 "write a two line poem about mondays", "btw whats the difference between affect and effect",
                 "do i need a visa to visit japan from canada", "convert 5 miles to km", "explain inflation in simple words",
                 "what should i get my dad for his 60th, he likes fishing", "random but why do onions make you cry",
                 "what does a promise do in javascript", "probability of rolling two sixes?",
                 "quick q - best substitute for buttermilk in pancakes?",
                 "who was the roman emperor when pompeii was destroyed"],
    "holdout3": ["what is the plural of octopus", "can you translate this to english: 'je voudrais réserver une table pour deux'",
                 "write a short best man toast for my brothers wedding, 1 minute max", "how many teaspoons in a tablespoon",
                 "hey random question 😅 how do i get red wine out of a white carpet", "Please explain the difference between TCP and UDP.",
                 "best time of year to visit vietnam", "how do i make a pivot table in excel",
                 "calculate compound interest on 10000 at 4% for 5 years", "what is the meaning of life lol",
                 "tell me a bedtime story about a dragon for my 4 year old", "how often should i water a cactus",
                 "give me a 20 minute hiit workout no equipment", "who wrote the song bohemian rhapsody", "what is 2 to the power of 20",
                 "write a python script that reads a csv and prints the average of one column",
                 "can you recommend some anime similar to attack on titan",
                 "whats the difference between baking soda and baking powder", "explain en passant in chess",
                 "ok one more unrelated thing what is a black hole made of",
                 "BTW how do I say 'where is the train station' in italian",
                 "Could you draft a polite email to my child's teacher asking for a meeting next week?",
                 "how far is madrid to barcelona by car", "who was cleopatra"],
}  # fmt: skip
SWITCH_PREFIXES = {
    "dev": ["also, ", "one more thing: ", "different question - ", "oh and ", "btw ", "Oh, also: "],
    "test": ["another thing, ", "and also ", "separately: ", "new question: ", "PS ", "By the way, "],
    "holdout": ["on another note, ", "quick other question: ", "changing topic - ", "while i have you, ",
                "totally different thing, ", "Something else: "],
    "holdout2": ["ok next thing, ", "unrelated, ", "oh before i forget - ", "moving on, ", "Separate issue: ",
                 "can i ask about something else? "],
    "holdout3": ["Also another question please: ", "ok and ", "sry one more - ", "Additionally, I would like to ask: ",
                 "other topic 👉 ", "and another thing i wanted to ask "],
}  # fmt: skip
NO_PREFIX_SHARE = 0.4  # switches written as the bare Bitext instruction
SHORT_SWITCH_SHARE = 0.3  # switches drawn from a category's shortest instructions


def draw_kind(rng: random.Random, previous_kind: str, *, confirm_allowed: bool) -> str:
    """The kind of the next follow-up (``KIND_WEIGHTS``, then ``CONTEXT_WEIGHTS`` for a context turn)
    under the structural rules: nothing context-dependent right after an out-of-scope turn (no "it"
    to resolve), no confirm after a confirm (or where ``confirm_allowed`` is false), no clarify
    after a clarify."""
    kinds = dict(KIND_WEIGHTS)
    if previous_kind == "out_of_scope":
        del kinds["context"]
    kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    if kind != "context":
        return kind
    sub = dict(CONTEXT_WEIGHTS)
    if not confirm_allowed or previous_kind == "confirm":
        del sub["confirm"]
    if previous_kind == "clarify":
        del sub["clarify"]
    return rng.choices(list(sub), weights=list(sub.values()))[0]


def split_of(first_text: str) -> str:
    """dev or test, from a hash salted apart from ``demo.bucket`` (every first text has bucket >= 80)."""
    digest = hashlib.sha256(f"conversations-split:{first_text}".encode()).hexdigest()
    return "dev" if int(digest[:8], 16) % 100 < DEV_SHARE else "test"


def _reference(row: dict[str, str]) -> str:
    return row["response"].replace("\r\n", "\n").strip()


def _bitext_turn(row: dict[str, str], kind: str, text: str | None = None) -> dict[str, Any]:
    return {"text": text if text is not None else row["instruction"], "category": row["category"], "intent": row["intent"],
            "kind": kind, "reference": _reference(row), "continues": None}  # fmt: skip


def _with_prefix(prefix: str, instruction: str) -> str:
    # "also, Can you ..." reads oddly: lower a capitalised first word, but keep "I", "I'd" and acronyms.
    if prefix and len(instruction) > 1 and instruction[0].isupper() and instruction[1].islower():
        instruction = instruction[0].lower() + instruction[1:]
    return prefix + instruction


def build(seed: int = SEED, wording: str | None = None) -> list[dict[str, Any]]:
    """The conversations, in file order; the same seed always gives the same list.

    ``wording`` (``HOLDOUT``, ``HOLDOUT2``, ``HOLDOUT3``) takes every hand-written turn from that half and labels every
    conversation with it; by default each conversation's split (dev or test) picks its half.
    """
    rng = random.Random(seed)
    rows = sorted((r for r in load_bitext() if bucket(r["instruction"]) >= 80), key=lambda r: r["instruction"])
    pool = {c: [r for r in rows if r["category"] == c] for c in sorted({r["category"] for r in rows})}
    categories = list(pool)
    short = {c: sorted(rs, key=lambda r: (len(r["instruction"].split()), r["instruction"]))[: max(3, len(rs) // 4)]
             for c, rs in pool.items()}  # fmt: skip

    firsts: list[dict[str, str]] = []
    for category in categories:
        candidates = list(pool[category])
        rng.shuffle(candidates)
        firsts.extend(candidates[:FIRST_PER_CATEGORY])
    rng.shuffle(firsts)

    def follow_up(split: str, turns: list[dict[str, Any]], topic: int) -> dict[str, Any]:
        current = turns[topic]
        previous = turns[-1]
        used = {t["text"] for t in turns}
        kind = draw_kind(rng, previous["kind"], confirm_allowed=current["intent"] in ACTION_INTENTS)
        if kind in CONTEXT_KINDS:
            if kind == "anaphoric":
                specific = [t for t, intents in ANAPHORIC[current["category"]][split]
                            if (not intents or current["intent"] in intents) and t not in used]  # fmt: skip
                generic = [t for t in GENERIC_ANAPHORIC[split] if t not in used]
                options = specific if specific and rng.random() < 0.65 else generic
            else:
                options = [t for t in (CONFIRM if kind == "confirm" else CLARIFY)[split] if t not in used]
            return {"text": rng.choice(options), "category": current["category"], "intent": current["intent"],
                    "kind": kind, "reference": current["reference"], "continues": topic}  # fmt: skip
        if kind == "out_of_scope":
            text = rng.choice([t for t in OUT_OF_SCOPE_REQUESTS[split] if t not in used])
            return {"text": text, "category": None, "intent": None, "kind": kind, "reference": None, "continues": None}
        if kind == "same_category":
            row = rng.choice([r for r in pool[current["category"]] if r["instruction"] not in used])
            return _bitext_turn(row, kind)
        category = rng.choice([c for c in categories if c != current["category"]])
        candidates = short[category] if rng.random() < SHORT_SWITCH_SHARE else pool[category]
        row = rng.choice([r for r in candidates if r["instruction"] not in used])
        prefix = "" if rng.random() < NO_PREFIX_SHARE else rng.choice(SWITCH_PREFIXES[split])
        return _bitext_turn(row, kind, _with_prefix(prefix, row["instruction"]))

    conversations: list[dict[str, Any]] = []
    for i, first in enumerate(firsts, start=1):
        split = wording or split_of(first["instruction"])
        turns = [_bitext_turn(first, "first")]
        topic = 0  # index of the last self-contained Bitext turn: what context-dependent turns continue
        for _ in range(rng.randint(1, 3)):
            turn = follow_up(split, turns, topic)
            turns.append(turn)
            if turn["kind"] in ("same_category", "switch"):
                topic = len(turns) - 1
        prefix = {None: "conv", HOLDOUT: "hold"}.get(wording, wording)  # HOLDOUT2, HOLDOUT3: their own name
        conversations.append({"id": f"{prefix}-{i:04d}", "split": split, "turns": turns})
    return conversations


def render(conversations: list[dict[str, Any]]) -> str:
    """The JSONL text, one conversation a line, exactly as written to ``OUT``."""
    return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations)


def summary(conversations: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts per split, per turn kind, per first-turn category and per conversation length."""
    turns = [t for c in conversations for t in c["turns"]]
    return {
        "split": dict(Counter(str(c["split"]) for c in conversations)),
        "kind": dict(Counter(str(t["kind"]) for t in turns)),
        "first_category": dict(Counter(str(c["turns"][0]["category"]) for c in conversations)),
        "turns_per_conversation": dict(Counter(str(len(c["turns"])) for c in conversations)),
    }


def main() -> None:
    for path, seed, wording in CORPORA:
        conversations = build(seed, wording)
        path.write_text(render(conversations), encoding="utf-8")
        print(f"{path}: {len(conversations)} conversations")
        for name, counts in summary(conversations).items():
            print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
